"""End to end on a tiny random Qwen2-VL with pictures of two sizes (two variable grids): ``fastrm distill
build / train / eval``, ``guardrail calibrate`` and ``Guard.generate`` (#16)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console

from fastrm_core import FastRMProxy, get_adapter, load_vlm
from fastrm_core.cli import main as fastrm_main
from fastrm_core.distill.dataset import iter_records, load_manifest
from fastrm_core.testing import build_tiny_qwen2_vl
from guardrail import Guard
from guardrail.cli.main import main as guardrail_main

pytestmark = pytest.mark.slow  # the CLI's long commands, end to end

SIZES = [(48, 32), (32, 64)]  # (width, height): merged grids 2x3 (6 tokens) and 4x2 (8 tokens)
GRIDS = {(48, 32): (2, 3), (32, 64): (4, 2)}
QUESTIONS = ["what color is the circle?", "how many objects are there?", "is there a red square?",
             "what shape is left of the triangle?"]
N_RECORDS = 24


def guardrail(*argv):
    buf = io.StringIO()
    code = guardrail_main(list(map(str, argv)), console=Console(file=buf, width=200, color_system=None))
    return code, buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen-e2e")
    model, processor = build_tiny_qwen2_vl(seed=3)
    tok = processor.tokenizer
    # a random model that answers with words: special tokens (but the end of turn) and punctuation suppressed
    specials = ["<|endoftext|>", "<|im_start|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>", "<unk>", "?", ".", ",", ":", "!"]
    model.generation_config.suppress_tokens = tok.convert_tokens_to_ids(specials)
    model.generation_config.min_new_tokens = 1
    model_dir = root / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    records = []
    for k in range(N_RECORDS):
        w, h = SIZES[k % 2]
        path = root / f"img{k}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        records.append({"id": f"r{k}", "image": path.name, "question": QUESTIONS[k % len(QUESTIONS)],
                        "answers": ["zzz"], "family": "attribute" if k % 3 else "counting"})
    # A random model is never right: label half of the records with its own (greedy) answer, so that
    # calibration sees both classes.
    vlm = load_vlm(model_dir)
    adapter = get_adapter(vlm[0])
    for k, rec in enumerate(records):
        if k % 2 == 0:
            prompt = adapter.build_prompt(vlm[1], rec["question"])[0]
            inputs = vlm[1](images=[Image.open(root / rec["image"]).convert("RGB")], text=[prompt], return_tensors="pt")
            with torch.no_grad():
                out = vlm[0].generate(**inputs, max_new_tokens=3, do_sample=False)
            rec["answers"] = [tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"root": root, "model": model_dir, "data": data, "vlm": vlm}


def test_distill_calibrate_and_guard_on_qwen2_vl(world, tmp_path, capsys):
    model, data = str(world["model"]), str(world["data"])
    ds, proxy_dir, report = tmp_path / "ds", tmp_path / "proxy", tmp_path / "report.json"

    # distill build: variable grids, no fixed grid in the manifest, each record's maps over its own tokens
    assert fastrm_main(["distill", "build", "--data", data, "--out", str(ds), "--model", model,
                        "--max-new-tokens", "3", "--records-per-shard", "5"]) == 0, capsys.readouterr().err
    manifest = load_manifest(ds)
    assert manifest.complete and manifest.grid is None and manifest.n_image_tokens is None
    assert manifest.adapter == "qwen2_vl" and manifest.n_records == N_RECORDS
    seen = set()
    for meta, tensors in iter_records(ds):
        (region,) = meta["regions"]
        rows, cols = region["grid"]
        assert tensors["maps"].shape[1] == tensors["image_states"].shape[0] == rows * cols
        seen.add((rows, cols))
    assert seen == set(GRIDS.values())

    # distill train: a proxy that pins no grid
    assert fastrm_main(["distill", "train", "--data", str(ds), "--out", str(proxy_dir), "--lr", "1e-2",
                        "--batch-size", "8", "--steps", "6", "--eval-every", "3", "--val-fraction", "0.25",
                        "--tokens", "all"]) == 0, capsys.readouterr().err
    proxy = FastRMProxy.from_pretrained(proxy_dir)
    assert proxy.config.grid is None and proxy.config.adapter == "qwen2_vl"

    # distill eval, with perturbation curves (patches removed at the language model's input)
    assert fastrm_main(["distill", "eval", "--data", data, "--out", str(report), "--model", model,
                        "--proxy", str(proxy_dir), "--n", "4", "--max-new-tokens", "2", "--perturb-batch-size", "16",
                        "--bootstrap", "0"]) == 0, capsys.readouterr().err
    result = json.loads(report.read_text())
    assert result["n_records"] == 4 and result["n_skipped"] == 0
    assert set(result["perturbation"]["positive"]) >= {"proxy", "gradient", "gradcam", "random"}

    # guardrail calibrate on the same labelled set
    cal = tmp_path / "cal.json"
    code, text = guardrail("calibrate", "--model", model, "--proxy", proxy_dir, "--data", data, "--out", cal,
                           "--max-new-tokens", "3", "--batch-size", "4", "--preset", "paper")
    assert code == 0, text
    fitted = json.loads(cal.read_text())
    assert fitted["proxy_hash"] == proxy.fingerprint()

    # Guard.generate and a batch of pictures of both sizes: maps on each picture's own grid
    guard = Guard(*world["vlm"], proxy=proxy_dir, calibration=cal)
    for k in range(2):
        image = Image.open(world["root"] / f"img{k}.png").convert("RGB")
        res = guard.generate(image, QUESTIONS[k], max_new_tokens=3)
        assert res.error is None and res.verdict in ("confident", "uncertain")
        assert res.maps.shape[1:] == GRIDS[image.size] and len(res.maps) == len(res.token_ids)
        assert [(r.image, r.kind, r.grid) for r in res.regions] == [(0, "full", GRIDS[image.size])]
    # the guard span says the grid and the regions its token maps are over
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    traced = Guard(*world["vlm"], proxy=proxy_dir, calibration=cal, tracer_provider=provider)
    traced.generate(Image.open(world["root"] / "img1.png").convert("RGB"), QUESTIONS[1], max_new_tokens=3)
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm"]
    assert tuple(span.attributes["fastrm.map.grid"]) == (4, 2)
    assert json.loads(span.attributes["fastrm.map.regions"]) == [{"image": 0, "kind": "full", "grid": [4, 2]}]
    batch = guard.generate_batch([(Image.open(world["root"] / f"img{k}.png").convert("RGB"), QUESTIONS[k])
                                  for k in range(2)], max_new_tokens=3)
    assert [r.maps.shape[1:] for r in batch] == [GRIDS[s] for s in SIZES]
