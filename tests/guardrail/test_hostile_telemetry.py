"""Telemetry containment (issue #18, rows 14, 15, 16): processors cannot break or stall the call; nothing leaks; drops are told."""

from __future__ import annotations

import json
import sys
import time
import types

import pytest
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from guardrail import Guard, Limits, MapBudget, semconv
from policies import parse_policy

KW = dict(max_new_tokens=3, min_new_tokens=3)


def _provider(*processors, max_events=None):
    exporter = InMemorySpanExporter()
    # the SDK's default is 128 events per span; a lower limit lets the tiny test model (whose
    # short context cannot generate 150 tokens) exceed it the same way a 150-token answer does
    provider = TracerProvider(span_limits=SpanLimits(max_events=max_events)) if max_events else TracerProvider()
    for p in processors:
        provider.add_span_processor(p)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


class Raising(SpanProcessor):
    def __init__(self, where):
        self.where = where

    def on_start(self, span, parent_context=None):
        if self.where == "start":
            raise RuntimeError("on_start exploded")

    def on_end(self, span):
        if self.where == "end":
            raise RuntimeError("on_end exploded")


class Hanging(SpanProcessor):
    def on_end(self, span):
        time.sleep(5)


@pytest.mark.parametrize("where", ["start", "end"])
def test_row14_span_processor_raising_in_on_start_or_on_end_never_reaches_the_caller(
        tiny_llava, tiny_proxy, calibration_uncertain, image, where):
    provider, _ = _provider(Raising(where))
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider)
    assert g.generate(image, "What color?", **KW).error is None
    events = list(g.stream(image, "What color?", **KW))
    assert events[-1].error is None


def test_row14_hanging_span_processor_does_not_stall_the_call_beyond_the_telemetry_timeout(
        tiny_llava, tiny_proxy, calibration_uncertain, image):
    provider, _ = _provider(Hanging())
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              limits=Limits(telemetry_timeout_s=0.2))
    start = time.perf_counter()
    r = g.generate(image, "What color?", **KW)
    assert r.error is None
    assert time.perf_counter() - start < 2.5  # two spans, each given up on after 0.2 s; not 2 x 5 s


def test_row15_content_capture_off_exports_no_token_ids_and_no_handler_text(
        tiny_llava, tiny_proxy, calibration_uncertain, image, monkeypatch):
    module = types.ModuleType("leaky_hooks_q")

    def leak(record):
        raise RuntimeError(f"cannot page about {record['payload']['question']!r}")

    module.leak = leak
    monkeypatch.setitem(sys.modules, "leaky_hooks_q", module)
    policy = parse_policy('id: p\nversion: 1\ndefault:\n  action: escalate\n  escalation: {handler: "leaky_hooks_q:leak"}\n')
    provider, exporter = _provider()
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              policy=policy, capture_content=False)
    r = g.generate(image, "secret question about a circle", **KW)
    assert "secret question" in r.error  # the application's own result keeps the detail
    for span in exporter.get_finished_spans():
        blobs = [str(v) for v in span.attributes.values()]
        blobs += [str(v) for e in span.events for v in e.attributes.values()]
        assert not any("secret question" in b for b in blobs), span.name
        for event in span.events:
            assert "fastrm.token.id" not in event.attributes


def test_row16_more_tokens_than_the_span_event_limit_drops_truthfully(tiny_llava, tiny_proxy, calibration_uncertain, image):
    provider, exporter = _provider(max_events=8)
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider)
    r = g.generate(image, "What color?", max_new_tokens=10, min_new_tokens=10)
    assert r.error is None
    span = [s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm"][0]
    token_events = [e for e in span.events if e.name == "fastrm.token"]
    assert span.dropped_events == 0, "the SDK dropped events silently"
    assert len(token_events) + span.attributes["fastrm.token_events.dropped"] == len(r.token_ids) == 10
    assert span.attributes["fastrm.token_events.dropped"] == 3  # 7 token events + the result event = 8
    assert span.events[-1].name == semconv.GUARDRAIL_RESULT_EVENT
    with_maps = [e for e in token_events if "fastrm.map.data" in e.attributes]
    assert span.attributes["fastrm.maps.attached"] == len(with_maps)
    assert span.attributes["fastrm.maps.attached"] + span.attributes["fastrm.maps.dropped"] == 10


def test_row16_small_map_budget_reports_what_is_really_exported(tiny_llava, tiny_proxy, calibration_uncertain, image):
    provider, exporter = _provider(max_events=8)
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              map_budget=MapBudget(max_bytes=100))
    assert g.generate(image, "What color?", max_new_tokens=10, min_new_tokens=10).error is None
    span = [s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm"][0]
    with_maps = [e for e in span.events if e.name == "fastrm.token" and "fastrm.map.data" in e.attributes]
    assert span.attributes["fastrm.maps.attached"] == len(with_maps) > 0


def test_a_big_batch_keeps_the_chat_span_attributes_within_the_limit(tiny_llava, tiny_proxy, calibration_uncertain, image):
    """Per-row messages of a 16-row batch would pass the SDK's 128 attributes, which then drops the
    span's *oldest* attributes (the model, the token counts): only the rows that fit get messages."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=provider,
              capture_content=True)
    g.generate_batch([(image, f"What color is object {i}?") for i in range(16)], max_new_tokens=2)
    chat = next(s for s in exporter.get_finished_spans() if s.name.startswith("chat"))
    assert chat.dropped_attributes == 0
    assert chat.attributes["gen_ai.operation.name"] == "chat" and "gen_ai.usage.output_tokens" in chat.attributes
    k = chat.attributes["fastrm.batch.rows_in_messages"]
    assert 0 < k < 16 and f"llm.input_messages.{k - 1}.message.role" in chat.attributes
    assert len(json.loads(chat.attributes["input.value"])) == 16  # every row in the JSON list


def test_span_work_runs_on_one_reused_thread_and_a_stuck_one_is_replaced():
    """Span starts and ends run on one long-lived runner thread (no thread per span); a call stuck past
    its timeout leaves that runner behind, and the next call gets a fresh one that works."""
    import threading

    from guardrail.telemetry import safe_span

    names = [safe_span._bounded(lambda: threading.current_thread(), 1.0, None) for _ in range(5)]
    assert len(set(names)) == 1 and names[0] is not threading.current_thread()
    release = threading.Event()
    start = time.perf_counter()
    assert safe_span._bounded(lambda: release.wait(5), 0.1, "gave up") == "gave up"
    assert time.perf_counter() - start < 1.0
    after = safe_span._bounded(lambda: threading.current_thread(), 1.0, None)
    assert after is not None and after is not names[0]  # a new runner, not the stuck one
    assert safe_span._bounded(lambda: 1 / 0, 1.0, "default") == "default"  # an exception becomes the default
    release.set()


def test_busy_runner_gives_a_concurrent_caller_its_own_thread():
    import threading

    from guardrail.telemetry import safe_span

    gate, inside = threading.Event(), threading.Event()
    first = {}

    def slow():
        inside.set()
        gate.wait(2)
        return threading.current_thread()

    t = threading.Thread(target=lambda: first.update(thread=safe_span._bounded(slow, 3.0, None)))
    t.start()
    assert inside.wait(2)
    other = safe_span._bounded(lambda: threading.current_thread(), 1.0, None)  # not queued behind slow()
    gate.set()
    t.join(3)
    assert other is not None and first["thread"] is not None and other is not first["thread"]


def test_no_sdk_provider_means_no_telemetry_thread(tiny_llava, tiny_proxy, calibration_uncertain, image, monkeypatch):
    """Without an SDK tracer provider there is no processor to contain: spans are not handed to a thread."""
    from opentelemetry import trace

    from guardrail.telemetry import safe_span

    calls = []
    monkeypatch.setattr(safe_span, "_bounded", lambda *a: calls.append(a))
    g = Guard(*tiny_llava, proxy=tiny_proxy, calibration=calibration_uncertain, tracer_provider=trace.NoOpTracerProvider())
    assert g.generate(image, "What color?", **KW).error is None
    assert calls == []
