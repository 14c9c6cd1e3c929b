"""JSONL exporter round trip, bounded exporters (raising / hanging), OTLP wiring, configure_tracing."""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import threading
import time
import types

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from fastrm_common.errors import DataError, GuardrailError
import guardrail.telemetry.exporters as exporters_module
from guardrail.telemetry.exporters import (
    BoundedSpanExporter,
    JsonlFileSpanExporter,
    configure_tracing,
    otlp_endpoint_from_env,
    read_trace_jsonl,
)
from guardrail.telemetry.mapcodec import encode_map, map_attributes, map_from_attributes
from guardrail.telemetry.otlp_json import decode_attributes, encode_attributes


def _make_spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("fastrm-guard", "9.9")
    m = np.random.default_rng(0).random((4, 5))
    with tracer.start_as_current_span("chat tiny", kind=SpanKind.INTERNAL) as chat:
        chat.set_attributes(
            {
                "s": "ünïcode",
                "i": 2**40,
                "f": 0.1,
                "b": True,
                "nan": math.nan,
                "inf": -math.inf,
                "ss": ["a", "b"],
                "ii": [1, 2],
                "ff": [0.5, 1.5],
                "bb": [True, False],
            }
        )
        chat.add_event("fastrm.token", {"fastrm.token.index": 0, **map_attributes(encode_map(m))})
        with tracer.start_as_current_span("apply_guardrail fastrm", kind=SpanKind.CLIENT) as guard:
            guard.set_status(Status(StatusCode.ERROR, "policy failed"))
    provider.shutdown()
    return exporter.get_finished_spans(), m


def test_jsonl_round_trip_matches_in_memory_spans(tmp_path):
    spans, m = _make_spans()
    path = tmp_path / "sub" / "trace.jsonl"
    exporter = JsonlFileSpanExporter(path)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)

    read = read_trace_jsonl(path)
    assert [r["name"] for r in read] == [s.name for s in spans]
    for record, span in zip(read, spans, strict=True):
        assert record["traceId"] == format(span.context.trace_id, "032x")
        assert record["spanId"] == format(span.context.span_id, "016x")
        assert record["startTimeUnixNano"] == span.start_time and record["endTimeUnixNano"] == span.end_time
        assert record["scope"] == {"name": "fastrm-guard", "version": "9.9"}
        assert record["resource"]["attributes"]["telemetry.sdk.language"] == "python"
        expected = dict(span.attributes)
        got = record["attributes"]
        if "nan" in expected:  # NaN != NaN: compare it apart
            assert math.isnan(got.pop("nan")) and math.isnan(expected.pop("nan"))
        assert got == expected
        assert [e["name"] for e in record["events"]] == [e.name for e in span.events]
        for e_rec, e_span in zip(record["events"], span.events, strict=True):
            assert e_rec["attributes"] == dict(e_span.attributes)
            assert e_rec["timeUnixNano"] == e_span.timestamp
    guard, chat = read
    assert guard["parentSpanId"] == chat["spanId"] and chat["parentSpanId"] == ""
    assert guard["traceId"] == chat["traceId"]
    assert (chat["kind"], guard["kind"]) == (1, 3)  # OTLP INTERNAL, CLIENT
    assert guard["status"] == {"code": 2, "message": "policy failed"}
    assert chat["status"] == {"code": 0, "message": ""}
    np.testing.assert_array_equal(
        map_from_attributes(chat["events"][0]["attributes"]), map_from_attributes(spans[1].events[0].attributes)
    )
    assert np.abs(map_from_attributes(chat["events"][0]["attributes"]) - m).max() <= (m.max() - m.min()) / 510 + 1e-12


def test_raw_lines_are_otlp_shaped(tmp_path):
    spans, _ = _make_spans()
    path = tmp_path / "t.jsonl"
    JsonlFileSpanExporter(path).export(spans)
    raw = read_trace_jsonl(path, decode=False)[1]
    attrs = {a["key"]: a["value"] for a in raw["attributes"]}
    assert attrs["i"] == {"intValue": str(2**40)}
    assert attrs["f"] == {"doubleValue": 0.1}
    assert attrs["nan"] == {"doubleValue": "NaN"} and attrs["inf"] == {"doubleValue": "-Infinity"}
    assert attrs["ss"] == {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}}
    assert isinstance(raw["startTimeUnixNano"], str)
    assert set(raw) >= {
        "traceId",
        "spanId",
        "parentSpanId",
        "name",
        "kind",
        "startTimeUnixNano",
        "endTimeUnixNano",
        "attributes",
        "events",
        "status",
        "resource",
        "scope",
    }


def test_attribute_codec_round_trip():
    attrs = {"a": 1, "b": "x", "c": (1.5, 2.5), "d": b"\x00\x01", "e": {"k": "v"}, "f": False}
    assert decode_attributes(encode_attributes(attrs)) == attrs


def test_jsonl_appends_and_is_thread_safe(tmp_path):
    spans, _ = _make_spans()
    path = tmp_path / "t.jsonl"
    exporter = JsonlFileSpanExporter(path)
    threads = [threading.Thread(target=lambda: [exporter.export(spans) for _ in range(25)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(read_trace_jsonl(path)) == 4 * 25 * 2
    exporter.shutdown()
    assert exporter.export(spans) is SpanExportResult.FAILURE


def test_jsonl_write_failure_is_reported_not_raised(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("")
    spans, _ = _make_spans()
    with caplog.at_level(logging.WARNING, logger="guardrail.telemetry.exporters"):
        assert JsonlFileSpanExporter(blocker / "t.jsonl").export(spans) is SpanExportResult.FAILURE
    assert "could not write 2 span(s)" in caplog.text


def test_read_trace_errors(tmp_path):
    with pytest.raises(DataError, match="trace file not found"):
        read_trace_jsonl(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"  # damaged lines are skipped and reported, not fatal (#30)
    bad.write_text('{"name": "a", "attributes": []}\n\n{"name": "b", "attr\n', encoding="utf-8")
    damaged: list[str] = []
    assert [s["name"] for s in read_trace_jsonl(bad, damaged=damaged)] == ["a"]
    assert len(damaged) == 1 and "bad.jsonl:3: not a JSON span record" in damaged[0]
    bad.write_text("[1, 2]\n", encoding="utf-8")
    damaged.clear()
    assert read_trace_jsonl(bad, damaged=damaged) == []
    assert "bad.jsonl:1: not a JSON span record (got list)" in damaged[0]


# ---------------------------------------------------------------- failing and hanging exporters


class Raising(SpanExporter):
    def export(self, spans):
        raise ConnectionError("collector down")

    def shutdown(self):
        raise ConnectionError("collector down")


class Hanging(SpanExporter):
    def __init__(self, seconds: float = 10.0):
        self.seconds = seconds
        self.calls = 0

    def export(self, spans):
        self.calls += 1
        time.sleep(self.seconds)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        time.sleep(self.seconds)

    def force_flush(self, timeout_millis=30000):
        time.sleep(self.seconds)
        return True


def _guarded_work(provider, n_spans=20):
    tracer = provider.get_tracer("test")
    for i in range(n_spans):
        with tracer.start_as_current_span(f"chat {i}") as span:
            span.set_attribute("i", i)


def test_raising_exporter_never_reaches_the_caller(tmp_path, caplog):
    path = tmp_path / "t.jsonl"
    provider = configure_tracing(jsonl_path=path, exporters=[Raising()], export_timeout_s=0.5, otlp_from_env=False)
    start = time.monotonic()
    with caplog.at_level(logging.ERROR):
        _guarded_work(provider)
        assert provider.force_flush(timeout_millis=1000) is True
        provider.shutdown()
    assert time.monotonic() - start < 2.0
    assert "collector down" in caplog.text
    assert len(read_trace_jsonl(path)) == 20  # the healthy exporter still got everything


class NeverAnswers(SpanExporter):
    """A backend that hangs in every call until the test releases it."""

    def __init__(self):
        self.calls = 0
        self.released = threading.Event()

    def export(self, spans):
        self.calls += 1
        self.released.wait()
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self.released.wait()

    def force_flush(self, timeout_millis=30000):
        self.released.wait()
        return True


def _finishes(step, limit_s: float = 120.0) -> None:
    """Run ``step`` in a thread; fail if it is still running after ``limit_s``.

    The exporter under test never answers before the test ends, so a step that waited for it
    would never finish: whether it finishes does not depend on the machine's load, and the
    generous limit only turns such a hang into a failure instead of a stuck suite.
    """
    errors = []

    def run():
        try:
            step()
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit_s)
    assert not thread.is_alive(), f"{step} waited for an exporter that never answers"
    if errors:
        raise errors[0]


def test_hanging_exporter_is_bounded(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    hanging = NeverAnswers()

    # The healthy JSONL exporter gets a bound it never meets even on a loaded machine (a batch of 512
    # spans can take longer than 0.3 s to write there, and a late batch makes the next one be dropped,
    # which is the wrapper's documented behaviour, not what this test is about); the hanging one keeps 0.3 s.
    def bounded(exporter, timeout_s):
        return BoundedSpanExporter(exporter, 120.0 if isinstance(exporter, JsonlFileSpanExporter) else timeout_s)

    monkeypatch.setattr(exporters_module, "BoundedSpanExporter", bounded)
    provider = configure_tracing(jsonl_path=path, exporters=[hanging], export_timeout_s=0.3, otlp_from_env=False)
    try:
        _finishes(lambda: _guarded_work(provider, n_spans=1200))  # > one batch (512): several exports are due
        _finishes(lambda: provider.force_flush(timeout_millis=500))
        _finishes(provider.shutdown)
        assert hanging.calls == 1  # later batches are dropped while the first export hangs
        assert len(read_trace_jsonl(path)) == 1200  # the other exporter got every span
    finally:
        hanging.released.set()


def test_bounded_exporter_results():
    class Ok(SpanExporter):
        def export(self, spans):
            return SpanExportResult.SUCCESS

        def force_flush(self, timeout_millis=30000):
            return True

    assert BoundedSpanExporter(Ok(), 1.0).export([]) is SpanExportResult.SUCCESS
    assert BoundedSpanExporter(Ok(), 1.0).force_flush() is True
    bounded = BoundedSpanExporter(Hanging(2.0), 0.05)
    t0 = time.monotonic()
    assert bounded.export([]) is SpanExportResult.FAILURE
    assert bounded.export([]) is SpanExportResult.FAILURE  # dropped at once: still busy
    assert bounded.force_flush() is False
    bounded.shutdown()
    assert time.monotonic() - t0 < 0.5
    assert BoundedSpanExporter(Raising(), 1.0).export([]) is SpanExportResult.FAILURE
    with pytest.raises(ValueError):
        BoundedSpanExporter(Raising(), 0)


# ---------------------------------------------------------------- configuration


def test_console_exporter(tmp_path):
    out = io.StringIO()
    provider = configure_tracing(console=out, otlp_from_env=False, service_name="svc")
    _guarded_work(provider, 1)
    provider.shutdown()
    printed = json.loads(out.getvalue())
    assert printed["name"] == "chat 0"
    assert printed["resource"]["attributes"]["service.name"] == "svc"


def test_service_name_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    provider = configure_tracing(jsonl_path=tmp_path / "t.jsonl", otlp_from_env=False)
    _guarded_work(provider, 1)
    provider.shutdown()
    assert read_trace_jsonl(tmp_path / "t.jsonl")[0]["resource"]["attributes"]["service.name"] == "from-env"


def test_no_exporters_is_a_valid_provider(monkeypatch):
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    provider = configure_tracing()
    _guarded_work(provider, 1)
    provider.shutdown()


@pytest.fixture
def no_otlp_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)


@pytest.fixture
def fake_otlp_package(monkeypatch):
    created = []

    class OTLPSpanExporter(SpanExporter):
        def __init__(self, **kwargs):
            created.append(kwargs)

        def export(self, spans):
            return SpanExportResult.SUCCESS

    module = types.ModuleType("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    module.OTLPSpanExporter = OTLPSpanExporter
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", module)
    return created


def test_otlp_missing_package_gives_a_clear_error(no_otlp_package, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    with pytest.raises(GuardrailError) as info:
        configure_tracing(otlp_endpoint="http://localhost:4318")
    assert str(info.value) == (
        "OTLP export was requested (http://localhost:4318) but the OTLP/HTTP exporter is not installed; "
        "install it with: pip install 'fastrm-guard[otlp]'"
    )


def test_otlp_from_env_missing_package(no_otlp_package, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert otlp_endpoint_from_env() == "http://collector:4318"
    with pytest.raises(GuardrailError, match="fastrm-guard\\[otlp\\]"):
        configure_tracing()
    configure_tracing(otlp_from_env=False).shutdown()  # env ignored on request


def test_otlp_endpoint_wiring(fake_otlp_package, monkeypatch):
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    configure_tracing(otlp_endpoint="http://localhost:4318/", export_timeout_s=2).shutdown()
    configure_tracing(otlp_endpoint="https://x/v1/traces").shutdown()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://env:4318/v1/traces")
    configure_tracing().shutdown()
    assert fake_otlp_package == [
        {"timeout": 2.0, "endpoint": "http://localhost:4318/v1/traces"},
        {"timeout": 5.0, "endpoint": "https://x/v1/traces"},
        {"timeout": 5.0},  # the exporter reads the OTEL_EXPORTER_OTLP_* variables itself
    ]


def test_real_otlp_exporter_if_installed(monkeypatch):
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    provider = configure_tracing(otlp_endpoint="http://127.0.0.1:9", export_timeout_s=0.5, otlp_from_env=False)
    _guarded_work(provider, 2)
    t0 = time.monotonic()
    provider.force_flush(timeout_millis=1000)
    provider.shutdown()
    assert time.monotonic() - t0 < 3.0
