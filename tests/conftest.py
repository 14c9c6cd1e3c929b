"""Shared fixtures: tiny LLaVA models built here, saved and loaded back through from_pretrained."""

from __future__ import annotations

import re

import pytest
import torch

from fastrm_core.loading import load_vlm
from fastrm_core.testing import blank_image, build_tiny_llava, build_tiny_qwen2_vl, llava_prompt

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Every test starts with one torch thread. A command under test may set more (``shapesvqa eval
    --threads``, default 2), and the bit-exact comparisons of the distillation tests depend on the
    reduction order the thread count sets; under pytest-xdist the tests that run before them differ
    from run to run, so the thread count must not leak from one test to the next."""
    yield
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)

_SLOW_MODULE = re.compile(r"^pytestmark = pytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path, config):
    """With ``-m "not slow"`` (make test-fast), a module whose every test is slow (a top-level
    ``pytestmark = pytest.mark.slow``) is not even imported: its imports (Ray, Hypothesis) cost seconds."""
    if collection_path.suffix != ".py" or (config.getoption("markexpr") or "").replace(" ", "") != "notslow":
        return None
    try:
        text = collection_path.read_text(encoding="utf-8")
    except OSError:
        return None
    return True if _SLOW_MODULE.search(text) else None


def pytest_configure(config):
    # the HTML report's tests in a real headless Chromium (make test installs it as root):
    # `pytest -m "not browser"` runs everything else
    config.addinivalue_line("markers", "browser: needs a headless Chromium (chromium-headless-shell or FASTRM_CHROMIUM)")


def _saved(tmp_path_factory, name: str, **spec):
    model, processor = build_tiny_llava(**spec)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return load_vlm(folder)


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory):
    """(model, processor): 2 layers, hidden 64, 4x4 patch grid, loaded via load_vlm."""
    return _saved(tmp_path_factory, "tiny-llava", num_layers=2)


@pytest.fixture(scope="session")
def tiny_llava_gqa(tmp_path_factory):
    """Grouped-query attention (4 query heads, 2 key/value heads), 3 layers, 'full' feature strategy."""
    return _saved(tmp_path_factory, "tiny-llava-gqa", num_layers=3, num_kv_heads=2, feature_strategy="full", seed=1)


def _saved_qwen(tmp_path_factory, name: str, **spec):
    model, processor = build_tiny_qwen2_vl(**spec)
    folder = tmp_path_factory.mktemp(name)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return load_vlm(folder)


@pytest.fixture(scope="session")
def tiny_qwen2_vl(tmp_path_factory):
    """(model, processor): a tiny random Qwen2-VL (2 layers, hidden 64, 8-pixel patches merged 2 x 2), via load_vlm."""
    return _saved_qwen(tmp_path_factory, "tiny-qwen2-vl")


@pytest.fixture(scope="session")
def tiny_qwen2_5_vl(tmp_path_factory):
    """(model, processor): a tiny random Qwen2.5-VL, via load_vlm."""
    return _saved_qwen(tmp_path_factory, "tiny-qwen2-5-vl", version="qwen2_5_vl", seed=1)


@pytest.fixture
def make_inputs():
    def make(processor, questions=("What color is the circle?",), colors=None, image_first=True, padding_side="left"):
        colors = colors or [(200, 30, 30 + 40 * i) for i in range(len(questions))]
        images = [blank_image(processor.image_processor.crop_size["height"], c) for c in colors]
        if image_first:
            texts = [llava_prompt(q) for q in questions]
        else:
            texts = [f"USER: {q} <image>\nanswer ASSISTANT:" for q in questions]
        processor.tokenizer.padding_side = padding_side
        return processor(images=images, text=texts, return_tensors="pt", padding=True)

    return make
