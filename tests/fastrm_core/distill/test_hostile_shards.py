"""Tampered distillation datasets (issue #18, row 6): every change is caught where the shards are consumed."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from fastrm_core.distill.dataset import BuildSettings, load_manifest
from fastrm_core.distill.runner import build_dataset
from fastrm_core.distill.trainer import PairStore
from fastrm_common.errors import ConfigMismatchError, DataError

from .conftest import SETTINGS


@pytest.fixture
def dataset(distill_world, tmp_path):
    out = tmp_path / "ds"
    shutil.copytree(distill_world["dataset"], out)
    return out


def _shard_files(folder):
    return [folder / s.file for s in load_manifest(folder).shards if s.file]


def test_row06_bit_flip_in_a_shard_is_caught_before_training(dataset):
    path = _shard_files(dataset)[0]
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="changed since it was built"):
        PairStore(dataset)


def test_row06_swapped_shards_are_caught(dataset):
    a, b = _shard_files(dataset)[:2]
    tmp = a.with_suffix(".swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    with pytest.raises(DataError, match="changed since it was built"):
        PairStore(dataset)


def test_row06_truncated_shard_is_a_data_error_and_a_resumed_build_redoes_it(distill_world, distill_model, dataset):
    path = _shard_files(dataset)[1]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError):
        PairStore(dataset)
    model, processor = distill_model
    seen = []
    build_dataset(distill_world["data"], dataset, model=model, processor=processor, settings=BuildSettings(**SETTINGS),
                  model_name=distill_world["model_dir"], on_record=lambda rid, n: seen.append(rid))
    assert seen, "the damaged shard was kept instead of rebuilt"
    PairStore(dataset)  # whole again


def test_row06_changed_image_refuses_to_resume(distill_world, distill_model, tmp_path):
    root = tmp_path / "world"
    shutil.copytree(distill_world["root"], root, ignore=shutil.ignore_patterns("dataset", "model"))
    model, processor = distill_model
    out = tmp_path / "ds"
    settings = BuildSettings(**SETTINGS)
    build_dataset(root / "data.jsonl", out, model=model, processor=processor, settings=settings,
                  model_name=distill_world["model_dir"])
    Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(root / "images" / "2.png")
    with pytest.raises(ConfigMismatchError, match="images_hash"):
        build_dataset(root / "data.jsonl", out, model=model, processor=processor, settings=settings,
                      model_name=distill_world["model_dir"])


def test_row06_changed_model_weights_in_the_same_folder_refuse_to_resume(distill_world, distill_model, tmp_path):
    model, processor = distill_model
    out = tmp_path / "ds"
    settings = BuildSettings(**SETTINGS)
    build_dataset(distill_world["data"], out, model=model, processor=processor, settings=settings,
                  model_name=distill_world["model_dir"])
    param = next(model.parameters())
    with torch.no_grad():
        param.add_(1e-3)
    try:
        with pytest.raises(ConfigMismatchError, match="model_hash"):
            build_dataset(distill_world["data"], out, model=model, processor=processor, settings=settings,
                          model_name=distill_world["model_dir"])
    finally:
        with torch.no_grad():
            param.sub_(1e-3)
