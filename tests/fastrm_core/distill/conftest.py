"""Fixtures of the distillation tests: a tiny LLaVA saved to disk, a small VQA JSONL with bad records,
and the dataset the local builder writes from it (built once per session)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastrm_core.testing import build_tiny_llava

N_GOOD = 6
SETTINGS = dict(max_new_tokens=3, records_per_shard=2)
QUESTIONS = ["what color is the circle?", "how many objects?", "is there a red square?", "what shape is left?"]


def _write_vqa(root: Path) -> Path:
    """data.jsonl: 6 good records (some with evidence masks), a missing image, an unreadable image, a bad line."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    lines = []
    for i in range(N_GOOD):
        img = np.zeros((32, 32, 3), np.uint8)
        img[:] = (40 * i, 200 - 25 * i, 90)
        img[8 * (i % 4) : 8 * (i % 4) + 8, 8:16] = (255, 255, 255)  # a bright patch that moves per image
        Image.fromarray(img).save(root / "images" / f"{i}.png")
        rec = {"id": f"q{i}", "image": f"images/{i}.png", "question": QUESTIONS[i % 4], "answers": ["red"]}
        if i % 2 == 0:
            mask = np.zeros((32, 32), np.uint8)
            mask[8 * (i % 4) : 8 * (i % 4) + 8, 8:16] = 255
            Image.fromarray(mask, mode="L").save(root / "masks" / f"{i}.png")
            rec.update(family="attribute", evidence_masks=[f"masks/{i}.png"])
        lines.append(json.dumps(rec))
    (root / "images" / "broken.png").write_bytes(b"not a png")
    lines.insert(3, json.dumps({"id": "missing", "image": "images/none.png", "question": "what?", "answers": ["red"]}))
    lines.insert(5, json.dumps({"id": "broken", "image": "images/broken.png", "question": "what?", "answers": ["red"]}))
    lines.append('{"id": "bad-json", ')
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def distill_world(tmp_path_factory):
    """``{"root", "model_dir", "data", "dataset"}``: a saved tiny model, the JSONL and its local dataset."""
    from fastrm_core.distill.dataset import BuildSettings
    from fastrm_core.distill.runner import build_dataset

    root = tmp_path_factory.mktemp("distill")
    model, processor = build_tiny_llava(num_layers=2)
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    data = _write_vqa(root)
    build_dataset(data, root / "dataset", model_name=model_dir, settings=BuildSettings(**SETTINGS))
    return {"root": root, "model_dir": model_dir, "data": data, "dataset": root / "dataset"}


@pytest.fixture(scope="session")
def distill_model(distill_world):
    """(model, processor) loaded from the saved tiny model folder."""
    from fastrm_core.loading import load_vlm

    return load_vlm(distill_world["model_dir"])


@pytest.fixture(scope="session")
def trained_proxy(distill_world, tmp_path_factory):
    """A proxy trained briefly on the session dataset, saved to a folder; returns the folder."""
    from fastrm_core.distill.trainer import TrainConfig, train_proxy

    out = tmp_path_factory.mktemp("proxy")
    train_proxy(distill_world["dataset"], out, TrainConfig(lr=1e-2, batch_size=8, steps=20, eval_every=5,
                                                           val_fraction=0.2))
    return out


def _assert_same_dataset(a, b, exact: bool = True) -> None:
    from fastrm_core.distill.dataset import iter_records

    ra, rb = list(iter_records(a)), list(iter_records(b))
    assert [m for m, _ in ra] == [m for m, _ in rb]
    for (_, ta), (_, tb) in zip(ra, rb):
        assert set(ta) == set(tb)
        assert torch.equal(ta["token_ids"], tb["token_ids"])
        assert torch.equal(ta["content"], tb["content"])
        for key in ("image_states", "token_states", "maps"):
            if exact:
                assert torch.equal(ta[key], tb[key]), key
            else:
                torch.testing.assert_close(ta[key], tb[key], rtol=1e-5, atol=1e-6)


@pytest.fixture
def assert_same_dataset():
    """``check(folder_a, folder_b, exact=True)``: same records (ids, answers, order) and tensors."""
    return _assert_same_dataset
