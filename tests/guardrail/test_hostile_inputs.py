"""Hostile inputs to the Guard (issue #18, rows 2, 3, 7, 8, 9, 20): InputError / ConfigMismatchError before model work."""

from __future__ import annotations

import struct
import threading
import time
import zlib

import numpy as np
import pytest

from fastrm_common.errors import ConfigMismatchError, InputError
from fastrm_core.testing import blank_image
from guardrail import Guard, Limits
from policies import parse_policy

KW = dict(max_new_tokens=3, min_new_tokens=3)


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height (1-bit grey) with a tiny, incomplete IDAT: 100-odd bytes."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def guard(tiny_llava, tiny_proxy, calibration_uncertain):
    return Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain)


@pytest.fixture
def no_model_calls(tiny_llava):
    model, _ = tiny_llava
    calls = []
    handle = model.register_forward_pre_hook(lambda *a: calls.append(1))
    yield calls
    handle.remove()


def test_row02_tags_given_as_a_string_are_an_input_error_not_letters(tiny_llava, tiny_proxy, calibration_uncertain, image):
    policy = parse_policy(
        "id: p\nversion: 1\nrules:\n  - {name: med, when: {tags_any: [medical]}, action: abstain}\ndefault: {action: allow}\n"
    )
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, policy=policy)
    with pytest.raises(InputError, match="tags"):
        g.generate(image, "What color?", tags="medical", **KW)
    with pytest.raises(InputError, match="tags"):
        list(g.stream(image, "What color?", tags="medical", **KW))
    assert g.generate(image, "What color?", tags=["medical"], **KW).action == "abstain"


def test_row03_bogus_model_hash_in_calibration_is_checked_against_the_weights(tiny_llava, tiny_proxy, make_cal):
    from fastrm_core import weights_fingerprint

    model, processor = tiny_llava
    bogus = make_cal(model_hash="sha256:" + "0" * 64, proxy_hash=tiny_proxy.fingerprint())
    with pytest.raises(ConfigMismatchError, match="model hash"):
        Guard(model, processor, proxy=tiny_proxy, calibration=bogus)
    good = make_cal(model_hash=weights_fingerprint(model), proxy_hash=tiny_proxy.fingerprint())
    Guard(model, processor, proxy=tiny_proxy, calibration=good)


def test_row03_calibration_naming_another_proxy_without_its_hash_is_refused(tiny_llava, tiny_proxy, make_cal):
    unverifiable = make_cal(proxy_id="some-other-proxy", proxy_hash=None)
    with pytest.raises(ConfigMismatchError, match="proxy"):
        Guard(*tiny_llava, proxy=tiny_proxy, calibration=unverifiable)


@pytest.mark.parametrize("size", [(30000, 30000), (1, 20000), (10000, 10000)], ids=["bomb", "thin", "large"])
def test_row07_decompression_bomb_thin_and_huge_images_are_refused_before_decoding(guard, tmp_path, no_model_calls, size):
    path = _png_header_only(tmp_path / "img.png", *size)
    assert path.stat().st_size < 300
    start = time.perf_counter()
    with pytest.raises(InputError, match="pixels|aspect ratio"):
        guard.generate(path, "What?", **KW)
    assert time.perf_counter() - start < 1.0
    assert no_model_calls == []


def test_row07_image_limits_are_configurable(tiny_llava, tiny_proxy, calibration_uncertain, image):
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, limits=Limits(max_image_pixels=100))
    with pytest.raises(InputError, match="pixels"):
        g.generate(image, "What?", **KW)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, bool])
def test_row08_non_uint8_image_arrays_are_refused_not_cast(guard, no_model_calls, dtype):
    arr = np.random.default_rng(0).random((32, 32, 3)).astype(dtype)
    with pytest.raises(InputError, match="uint8"):
        guard.generate(arr, "What?", **KW)
    assert no_model_calls == []


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": "3"}, "max_new_tokens"),
        ({"max_new_tokens": 10**6}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"no_such_argument": 1}, "no_such_argument"),
        ({"temperature": float("nan"), "do_sample": True}, "temperature"),
    ],
)
def test_row09_bad_generate_arguments_are_input_errors(guard, image, no_model_calls, kwargs, match):
    with pytest.raises(InputError, match=match):
        guard.generate(image, "What?", **kwargs)
    assert no_model_calls == []


def test_row09_closed_pil_image_is_an_input_error(guard, no_model_calls):
    img = blank_image(32)
    img.close()
    with pytest.raises(InputError):
        guard.generate(img, "What?", **KW)
    assert no_model_calls == []


def test_row09_100k_character_question_is_refused_before_taking_the_model_lock(guard, image, no_model_calls):
    start = time.perf_counter()
    with pytest.raises(InputError, match="question"):
        guard.generate(image, "what " * 20_000, **KW)
    assert time.perf_counter() - start < 1.0
    assert no_model_calls == []


def test_row09_question_token_limit_is_configurable(tiny_llava, tiny_proxy, calibration_uncertain, image):
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, limits=Limits(max_question_tokens=3))
    with pytest.raises(InputError, match="tokens"):
        g.generate(image, "what color is the circle", **KW)
    assert g.generate(image, "what color", **KW).error is None


def test_row20_padding_side_is_never_mutated_so_concurrent_calls_leave_it_alone(guard, image, monkeypatch):
    tok = guard.processor.tokenizer
    monkeypatch.setattr(tok, "padding_side", "right")
    seen = []
    real_call = type(guard.processor).__call__

    def spy(self, *args, **kwargs):
        seen.append(self.tokenizer.padding_side)
        return real_call(self, *args, **kwargs)

    monkeypatch.setattr(type(guard.processor), "__call__", spy)
    threads = [threading.Thread(target=guard.generate_batch, args=([(image, "What?"), (image, "What color is it?")],),
                                kwargs=KW) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen and set(seen) == {"right"}, "the Guard changed the shared tokenizer's padding_side"
    assert tok.padding_side == "right"
