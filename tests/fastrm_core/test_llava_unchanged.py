"""LLaVA-1.5 results are unchanged by the multi-family adapters (#16): old and new code paths agree.

``legacy_main/`` holds frozen copies of main's gradient baseline, per-step method, Grad-CAM and
capture from before regions existed (commit d047df1). Each is run beside today's code on the same
model and inputs, and the maps must be *identical* (bit for bit; the capture's to float32 rounding,
since it runs the proxy batched), on the shipped reference model
(whatever model is shipped at the time) and on a tiny LLaVA whose "full" feature strategy keeps a
CLS token.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastrm_common.prompting import build_prompt
from fastrm_core import FastRMProxy, ProxyConfig, capture, gradient_relevancy_batch, per_step_relevancy
from fastrm_core.distill.gradcam import gradcam_maps
from fastrm_core.inputs import prepare_inputs
from fastrm_core.loading import load_vlm

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "shapesvqa" / "assets"
LEGACY = Path(__file__).parent / "legacy_main"


def _legacy(name: str):
    spec = importlib.util.spec_from_file_location(f"legacy_main_{name}", LEGACY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _images(side: int, n: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def reference():
    model, processor = load_vlm(ASSETS / "reference-llava")
    return model, processor, FastRMProxy.from_pretrained(ASSETS / "reference-proxy")


def _inputs(model, processor, questions):
    side = processor.image_processor.crop_size["height"]
    prompts = [build_prompt(processor, q)[0] for q in questions]
    return prepare_inputs(model, processor, _images(side, len(prompts)), prompts)


def _generate(model, inputs, n=6):
    suppress = [int(model.config.image_token_id if model.config.image_token_id is not None else model.config.image_token_index)]
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=n, do_sample=False, suppress_tokens=suppress)


def _check_same(model, processor, proxy):
    relevancy, capturing, gradcam = _legacy("relevancy"), _legacy("capturing"), _legacy("gradcam")
    inputs = _inputs(model, processor, ["what color is the circle?", "how many objects are there?"])
    out = _generate(model, inputs)

    new = gradient_relevancy_batch(model, inputs, out)
    old = relevancy.gradient_relevancy_batch(model, inputs, out)
    for a, b in zip(new, old):
        assert torch.equal(a.maps, b.maps) and torch.equal(a.rows, b.rows) and a.grid == b.grid
        assert torch.equal(a.image_positions, b.image_positions) and torch.equal(a.token_ids, b.token_ids)

    one = _inputs(model, processor, ["what shape is left of the circle?"])
    a = per_step_relevancy(model, one, 4)
    b = relevancy.per_step_relevancy(model, one, 4)
    assert torch.equal(a.token_ids, b.token_ids) and torch.equal(a.maps, b.maps)

    gen1 = _generate(model, one, 4)
    cam_new = gradcam_maps(model, one, gen1)
    cam_old = gradcam.gradcam_maps(model, one, gen1)
    assert torch.equal(cam_new.reshape(cam_old.shape), cam_old)

    perturbation = _legacy("perturbation")
    from fastrm_core import get_adapter
    from fastrm_core.distill.perturbation import generate_without_patches

    adapter = get_adapter(model)
    n_img = cam_old[0].numel()
    remove = torch.from_numpy(np.random.default_rng(3).random((3, n_img)) < 0.5)
    kwargs = dict(max_new_tokens=4, do_sample=False, suppress_tokens=[adapter.image_token_id])
    for fill in ("zero", "mean"):
        new_answers = generate_without_patches(model, one, remove, adapter=adapter, generate_kwargs=kwargs, fill=fill)
        old_answers = perturbation.generate_without_patches(model, one, remove, adapter=adapter, generate_kwargs=kwargs,
                                                            fill=fill)
        assert all(torch.equal(a, b) for a, b in zip(new_answers, old_answers))

    if proxy is not None:
        with torch.no_grad(), capture(model, proxy) as cap_new:
            o1 = _generate(model, inputs)
        with torch.no_grad(), capturing.capture(model, proxy) as cap_old:
            o2 = _generate(model, inputs)
        assert torch.equal(o1, o2)
        # the capture now runs the proxy batched over the steps when the maps are read (#27: no proxy
        # work inside the decoding loop), where the old one ran it per step: the same arithmetic
        # in another summation order, so equal to float32 rounding rather than bit for bit
        assert torch.allclose(cap_new.patch_logits, cap_old.patch_logits, rtol=0, atol=1e-4)
        assert torch.allclose(cap_new.maps, cap_old.maps, rtol=0, atol=1e-5)
        assert not torch.equal(cap_new.maps, torch.zeros_like(cap_new.maps))
        # the older capture's three feature blocks come first; #14 appended image_std and text_input_mean
        assert np.array_equal(cap_new.features[:, : cap_old.features.shape[1]], cap_old.features)


def test_shipped_reference_model_maps_unchanged(reference):
    _check_same(*reference)


def test_cls_keeping_llava_maps_unchanged(tiny_llava_gqa):
    model, processor = tiny_llava_gqa
    torch.manual_seed(3)
    proxy = FastRMProxy(ProxyConfig(hidden_size=64, n_image_tokens=16, grid=(4, 4))).eval()
    _check_same(model, processor, proxy)
