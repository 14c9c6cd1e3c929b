"""The error contract (issues #18, #30) for PIL images of every mode: converted with their range or
refused with InputError, the same through load_image, the Guard and generate_batch(return_errors=True).

Hypothesis draws a mode, a size and pixel values; derandomized with a fixed budget, like
test_error_contract.py; ``slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from fastrm_common.errors import GuardrailError, InputError
from fastrm_common.images import load_image
from guardrail import BatchItemError, Guard, GuardResult

pytestmark = pytest.mark.slow  # Hypothesis runs (make test-fast skips the whole module)

CONTRACT = settings(derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "I;16L",
         "I;16B", "I;16N", "F", "La", "RGBa"]
REFUSED = {"I", "F", "La"}  # I, F: no fixed range (like a non-uint8 array); La: PIL cannot convert it


def _image(mode: str, w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = Image.new(mode, (w, h))
    raw = rng.integers(0, 256, len(img.tobytes()), dtype=np.uint8).tobytes()
    return Image.frombytes(mode, (w, h), raw) if raw else img


_images = st.builds(_image, st.sampled_from(MODES), st.integers(2, 40), st.integers(2, 40), st.integers(0, 2**16))


@pytest.fixture(scope="module")
def contract_guard(tiny_llava, tiny_proxy, calibration_uncertain):
    return Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain)


@settings(CONTRACT, max_examples=150)
@given(img=_images)
def test_every_pil_mode_is_converted_with_its_range_or_refused(img):
    try:
        out = load_image(img)
    except InputError as exc:
        assert img.mode in REFUSED, (img.mode, exc)
        return
    assert img.mode not in REFUSED and out.mode == "RGB" and out.size == img.size
    if img.mode.startswith("I;16"):  # the range is kept: the brightest 16-bit pixel is the brightest 8-bit one
        wide = np.asarray(img).astype(np.int64)
        gray = np.asarray(out)[..., 0].astype(np.int64)
        assert np.all(np.abs(gray - np.round(wide * 255 / 65535)) <= 1)


@settings(CONTRACT, max_examples=25)
@given(img=_images, call=st.sampled_from(["generate", "batch"]))
def test_the_guard_answers_or_refuses_every_pil_mode_like_load_image(contract_guard, img, call):
    try:
        load_image(img)
        expected_ok = True
    except InputError:
        expected_ok = False
    if call == "generate":
        try:
            out = contract_guard.generate(img, "What color?", max_new_tokens=2)
            assert expected_ok and isinstance(out, GuardResult)
        except GuardrailError:
            assert not expected_ok
        return
    good = Image.new("RGB", (16, 16), (10, 200, 10))
    results = contract_guard.generate_batch([(good, "What color?"), (img, "What color?")], return_errors=True,
                                            max_new_tokens=2)
    assert isinstance(results[0], GuardResult)
    if expected_ok:
        assert isinstance(results[1], GuardResult)
    else:
        assert isinstance(results[1], BatchItemError) and results[1].index == 1
        assert str(results[1].error).startswith("item 1: ")


def test_load_image_without_copy_returns_an_open_rgb_image_itself():
    """copy=False (what the Guard asks: it only reads the image during the call) skips the RGB copy of an
    open RGB image; other modes are still converted, and a closed image is still refused."""
    from PIL import Image

    from fastrm_common.errors import InputError
    from fastrm_common.images import load_image

    rgb = Image.new("RGB", (8, 6), (10, 20, 30))
    assert load_image(rgb, copy=False) is rgb and load_image(rgb) is not rgb
    grey = Image.new("L", (8, 6), 7)
    assert load_image(grey, copy=False).mode == "RGB"
    rgb.close()
    with pytest.raises(InputError, match="closed"):
        load_image(rgb, copy=False)
