"""Hardening round 3 (issue #30), the Python API's and the files' rows: each hostile or faulty input
gets a clear error (or a correct answer), never a hang, a silent wrong answer or a lost trace."""

from __future__ import annotations

import errno
import io
import os
import threading
import time

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from PIL import Image
from rich.console import Console

from calibration import Calibration
from fastrm_common.errors import CalibrationError, ConfigMismatchError, DataError, InputError, PolicyError
from fastrm_common.images import load_image
from fastrm_common.records import read_vqa_jsonl
from fastrm_core import get_adapter
from guardrail import BatchItemError, Guard, GuardResult
from guardrail import exporters as exporters_module
from guardrail.cli import main as guardrail_main
from guardrail.telemetry.exporters import JsonlFileSpanExporter
from guardrail.telemetry.otlp_json import read_trace_jsonl
from policies import load_policy
from policies.explain import printable


@pytest.fixture
def guard(tiny_llava, tiny_proxy, calibration_uncertain):
    model, processor = tiny_llava
    return Guard(model, processor, proxy=tiny_proxy, calibration=calibration_uncertain)


def run_cli(*argv) -> tuple[int, str]:
    buf = io.StringIO()
    code = guardrail_main(list(argv), console=Console(file=buf, width=120, color_system=None))
    return code, buf.getvalue()


# ------------------------------------------------------------------------------------ sampling
def test_a_subnormal_temperature_is_an_input_error(guard, image):
    for temperature in (5e-324, 1e-300, 0.001, 1e6):
        with pytest.raises(InputError, match="temperature must be a finite number from 0.01 to 100"):
            guard.generate(image, "What color?", do_sample=True, temperature=temperature, max_new_tokens=2)
    with pytest.raises(InputError, match="repetition_penalty"):
        guard.generate(image, "What color?", repetition_penalty=5e-324, max_new_tokens=2)
    assert isinstance(guard.generate(image, "What color?", do_sample=True, temperature=0.01, max_new_tokens=2),
                      GuardResult)


# ------------------------------------------------------------------------------------ PIL image modes
def ramp16(h=32, w=32) -> np.ndarray:
    return (np.linspace(0, 65535, h * w).reshape(h, w)).astype(np.uint16)


def test_16_bit_pil_images_are_scaled_by_their_range():
    wide = ramp16()
    img = load_image(Image.fromarray(wide))  # mode I;16
    expected = np.round(wide / 257).astype(np.uint8)
    assert np.array_equal(np.asarray(img)[..., 0], expected)  # not clipped to 0 and 255
    big = Image.frombytes("I;16B", (32, 32), wide.astype(">u2").tobytes())
    assert np.array_equal(np.asarray(load_image(big))[..., 1], expected)


@pytest.mark.parametrize("array", [np.arange(16, dtype=np.int32).reshape(4, 4) * 1000,
                                   np.full((4, 4), 0.5, np.float32)], ids=["I", "F"])
def test_32_bit_and_float_pil_images_are_refused_like_arrays(array):
    img = Image.fromarray(array)
    assert img.mode in ("I", "F")
    with pytest.raises(InputError, match="no fixed range"):
        load_image(img)
    with pytest.raises(InputError, match="uint8"):  # the NumPy array of the same pixels: refused too
        load_image(np.repeat(array[..., None], 3, axis=2))


def test_a_16_bit_image_gets_the_answer_of_its_8_bit_twin(guard, tmp_path):
    wide = ramp16()
    eight = Image.fromarray(np.round(wide / 257).astype(np.uint8)).convert("RGB")
    Image.fromarray(wide).save(tmp_path / "ramp16.png")
    a = guard.generate(eight, "What color?", max_new_tokens=3)
    b = guard.generate(tmp_path / "ramp16.png", "What color?", max_new_tokens=3)
    assert a.token_ids == b.token_ids


# ------------------------------------------------------------------------------------ generate_batch
def test_one_bad_item_does_not_fail_the_batch(guard, image):
    items = [(image, "What color?"), (image, "   "), (np.zeros((8, 8), np.uint8), "What shape?"), (image, "Is it red?")]
    results = guard.generate_batch(items, return_errors=True, max_new_tokens=2)
    assert [type(r).__name__ for r in results] == ["GuardResult", "BatchItemError", "BatchItemError", "GuardResult"]
    assert (results[1].index, results[2].index) == (1, 2)
    assert isinstance(results[1].error, InputError) and str(results[1]).startswith("item 1: the question is empty")
    assert str(results[2].error).startswith("item 2: an image array must be (H, W, 3)")
    assert results[0].token_ids == guard.generate(image, "What color?", max_new_tokens=2).token_ids
    with pytest.raises(InputError, match="^item 1: the question is empty"):  # the default: raise, naming the item
        guard.generate_batch(items, max_new_tokens=2)
    with pytest.raises(InputError, match="^the question is empty"):  # one item: no index to name
        guard.generate_batch([(image, "  ")])
    with pytest.raises(InputError, match="unknown generate argument"):  # the whole call's arguments still raise
        guard.generate_batch(items, return_errors=True, no_such_argument=1)
    good = guard.generate_batch([items[0], items[3]], return_errors=True, max_new_tokens=2)
    assert all(isinstance(r, GuardResult) for r in good)
    assert all(isinstance(r, BatchItemError) for r in guard.generate_batch([items[1]], return_errors=True))


# ------------------------------------------------------------------------------------ calibration identity
def test_a_calibration_without_model_hash_is_refused(tiny_llava, tiny_proxy, make_cal):
    model, processor = tiny_llava
    cal = make_cal(model_id=get_adapter(model).model_id, proxy_hash=tiny_proxy.fingerprint())
    assert cal.model_hash is None
    with pytest.raises(ConfigMismatchError, match="records no model_hash.*re-run `guardrail calibrate`"):
        Guard(model, processor, proxy=tiny_proxy, calibration=cal)
    Guard(model, processor, proxy=tiny_proxy, calibration=cal, allow_unhashed_calibration=True)  # explicit opt-out
    other = make_cal(model_id="someone-else", proxy_hash=tiny_proxy.fingerprint())
    with pytest.raises(ConfigMismatchError, match="someone-else"):  # the opt-out still compares names
        Guard(model, processor, proxy=tiny_proxy, calibration=other, allow_unhashed_calibration=True)


# ------------------------------------------------------------------------------------ FIFOs and devices
def finishes_within(fn, seconds: float, fifo=None):
    """fn()'s exception (or None); fails instead of hanging when it does not return in time."""
    box: dict = {}

    def target():
        try:
            fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive() and fifo is not None:  # unblock the reader so the daemon thread ends
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not thread.is_alive(), f"{fn} still reading after {seconds} s"
    return box.get("error")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_everywhere_a_user_file_is_read(tmp_path):
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    for fn, error in ((lambda: Calibration.load(fifo), CalibrationError), (lambda: load_policy(fifo), PolicyError),
                      (lambda: read_trace_jsonl(fifo), DataError), (lambda: read_vqa_jsonl(fifo), DataError)):
        exc = finishes_within(fn, 10, fifo)
        assert isinstance(exc, error) and "not a regular file (it is a FIFO)" in str(exc), exc
    box = {}
    assert finishes_within(lambda: box.setdefault("out", run_cli("policy", "check", str(fifo))), 10, fifo) is None
    code, out = box["out"]
    assert code != 0 and "not a regular file" in out


def test_a_device_is_refused_not_read_forever():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(CalibrationError, match="not a regular file"):
        Calibration.load("/dev/zero")


# ------------------------------------------------------------------------------------ policy check output
def test_policy_check_is_linear_in_line_length(tmp_path):
    path = tmp_path / "long.yaml"
    description = "word=1 0x1f x.y " * (256 * 1024 // 16)  # 256 KiB on one line: minutes with highlighting
    path.write_text(f"id: p\nversion: 1\ndescription: '{description}'\ndefault: {{action: allow}}\n")
    t0 = time.perf_counter()
    code, out = run_cli("policy", "check", str(path))
    assert code == 0 and time.perf_counter() - t0 < 15
    assert len(out) > len(description)


def test_bidi_and_control_characters_in_a_reason_are_escaped_when_printed(tmp_path):
    path = tmp_path / "bidi.yaml"
    path.write_text('id: p\nversion: 1\ndefault: {action: flag, reason: "safe \\u202eecnadiug\\u202c \\e[2J"}\n',
                    encoding="utf-8")
    assert "\u202e" in load_policy(path).default.reason  # stored as written
    code, out = run_cli("policy", "check", str(path))
    assert code == 0 and "\u202e" not in out and "\x1b" not in out
    assert "\\u202e" in out and "\\u202c" in out and "\\u001b" in out
    assert printable("plain text") == "plain text"


# ------------------------------------------------------------------------------------ the JSONL trace writer
def spans(n=2):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for i in range(n):
        with tracer.start_as_current_span(f"span-{i}") as span:
            span.set_attribute("payload", "x" * 2000)
    return exporter.get_finished_spans()


class _HalfWriting:
    """A file whose first write stops half-way with ENOSPC, like a disk that fills mid-line."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        self._f.write(data[: len(data) // 2])
        self._f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_a_failed_mid_line_write_is_undone(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    exporter = JsonlFileSpanExporter(path)
    first, second = spans(1), spans(2)
    assert exporter.export(first).name == "SUCCESS"
    monkeypatch.setattr(exporters_module, "open", lambda *a, **k: _HalfWriting(open(*a, **k)), raising=False)
    assert exporter.export(second).name == "FAILURE"
    monkeypatch.undo()
    assert path.read_bytes().endswith(b"\n")  # the half-written batch was truncated away
    assert exporter.export(second).name == "SUCCESS"
    damaged: list[str] = []
    assert [s["name"] for s in read_trace_jsonl(path, damaged=damaged)] == ["span-0", "span-0", "span-1"]
    assert damaged == []


def test_a_partial_line_left_behind_does_not_swallow_the_next_spans(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"name": "before", "attributes": []}\n{"name": "cut sho', encoding="utf-8")  # a crash mid-line
    assert JsonlFileSpanExporter(path).export(spans(2)).name == "SUCCESS"
    damaged: list[str] = []
    assert [s["name"] for s in read_trace_jsonl(path, damaged=damaged)] == ["before", "span-0", "span-1"]
    assert len(damaged) == 1 and "t.jsonl:2: not a JSON span record" in damaged[0]
    code, out = run_cli("view", str(path))  # the viewer shows the rest and says what it skipped
    assert "t.jsonl:2" in out and "line skipped" in out and "Traceback" not in out
