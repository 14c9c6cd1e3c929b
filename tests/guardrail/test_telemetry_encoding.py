"""Attribute builders and per-token map events, checked through the SDK's in-memory exporter."""

from __future__ import annotations

import json

import numpy as np
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from guardrail import semconv
from guardrail.telemetry.attributes import (
    MapBudget,
    chat_attributes,
    content_capture_enabled,
    get_tracer,
    guardrail_attributes,
    guardrail_result_event_attributes,
    input_messages_json,
    map_budget_attributes,
    map_from_attributes,
    message_text,
    output_messages_json,
    token_event_attributes,
)
from policies import DecisionContext, decide, decide_on_error, load_policy


@pytest.fixture
def memory():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def _simulated_guarded_call(provider, maps, entropies, tokens, *, budget, capture):
    """What the Guard does, with fixed numbers instead of a model."""
    tracer = get_tracer(provider)
    decision = decide(
        load_policy("default"), DecisionContext(verdict="uncertain", score=1.3, threshold=1.1, n_answer_tokens=2)
    )
    with tracer.start_as_current_span(semconv.chat_span_name("tiny-llava"), kind=SpanKind.INTERNAL) as chat:
        chat.set_attributes(
            chat_attributes("tiny-llava", input_tokens=40, output_tokens=len(tokens), finish_reasons=["stop"])
        )
        if capture:
            chat.set_attribute(semconv.GEN_AI_INPUT_MESSAGES, input_messages_json("What colour is the square?"))
            chat.set_attribute(semconv.GEN_AI_OUTPUT_MESSAGES, output_messages_json("red"))
        with tracer.start_as_current_span(semconv.GUARDRAIL_SPAN_NAME, kind=SpanKind.INTERNAL) as guard:
            kw = dict(verdict="uncertain", score=np.float64(1.3), threshold=1.1, flagged=True)
            guard.set_attributes(guardrail_attributes(decision, n_answer_tokens=2, max_token_entropy=2.0, **kw))
            plan = budget.plan(maps, priority=[0, 1])
            for i, tok in enumerate(tokens):
                guard.add_event(
                    semconv.TOKEN_EVENT,
                    token_event_attributes(
                        i,
                        np.float32(entropies[i]),
                        token_id=100 + i,
                        text=tok if capture else None,
                        scored=i < 2,
                        encoded_map=plan.encoded.get(i),
                    ),
                )
            guard.set_attributes(map_budget_attributes(plan, budget))
            guard.add_event(semconv.GUARDRAIL_RESULT_EVENT, guardrail_result_event_attributes(decision, **kw))
    return plan


def test_span_names_parentage_and_attributes(memory):
    provider, exporter = memory
    rng = np.random.default_rng(0)
    maps = [rng.random((6, 6)).astype(np.float32) for _ in range(3)]
    _simulated_guarded_call(provider, maps, [1.5, 2.0, 0.5], ["red", "</s>", "x"], budget=MapBudget(), capture=False)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"chat tiny-llava", "apply_guardrail fastrm"}
    chat, guard = spans["chat tiny-llava"], spans["apply_guardrail fastrm"]
    assert guard.parent.span_id == chat.context.span_id and chat.parent is None
    assert chat.kind == SpanKind.INTERNAL and guard.kind == SpanKind.INTERNAL
    assert chat.instrumentation_scope.name == "fastrm-guard"
    assert dict(chat.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "tiny-llava",
        "gen_ai.usage.input_tokens": 40,
        "gen_ai.usage.output_tokens": 3,
        "gen_ai.response.finish_reasons": ("stop",),
        "openinference.span.kind": "LLM",
        "llm.model_name": "tiny-llava",
        "llm.token_count.prompt": 40,
        "llm.token_count.completion": 3,
        "llm.token_count.total": 43,
    }
    summary = json.loads(guard.attributes["output.value"])
    assert summary == {"verdict": "uncertain", "score": 1.3, "threshold": 1.1, "action": "flag", "rule": "uncertain",
                       "flagged": True, "unguarded": False}
    assert dict(guard.attributes) == {
        "openinference.span.kind": "GUARDRAIL",
        "fastrm.guardrail.name": "fastrm",
        "fastrm.guardrail.verdict": "uncertain",
        "fastrm.guardrail.score": 1.3,
        "fastrm.guardrail.threshold": 1.1,
        "fastrm.guardrail.policy.id": "default",
        "fastrm.guardrail.policy.version": "1",
        "fastrm.guardrail.rule": "uncertain",
        "fastrm.guardrail.action": "flag",
        "fastrm.guardrail.reason": "the guard's verdict on this answer is uncertain (the result's verdict_reason says why); the answer may be wrong",
        "fastrm.guardrail.flagged": True,
        "fastrm.guardrail.unguarded": False,
        "fastrm.answer_tokens": 2,
        "fastrm.max_token_entropy": 2.0,
        "fastrm.maps.attached": 3,
        "fastrm.maps.dropped": 0,
        "fastrm.maps.bits": 8,
        "fastrm.maps.bytes": guard.attributes["fastrm.maps.bytes"],
        "fastrm.maps.budget_bytes": 65536,
        "output.value": guard.attributes["output.value"],
        "output.mime_type": "application/json",
    }
    assert not chat.events
    assert [e.name for e in guard.events] == ["fastrm.token"] * 3 + ["gen_ai.evaluation.result"]
    result = guard.events[-1]
    assert result.attributes["gen_ai.evaluation.name"] == "fastrm"
    assert result.attributes["gen_ai.evaluation.score.value"] == 1.3
    assert result.attributes["gen_ai.evaluation.score.label"] == "uncertain"
    assert result.attributes["fastrm.guardrail.action"] == "flag"
    assert not any(k.startswith(("gen_ai.operation", "openinference", "input.", "output.")) for k in result.attributes)


def test_token_events_carry_decodable_maps_and_no_text_by_default(memory):
    provider, exporter = memory
    rng = np.random.default_rng(1)
    maps = [rng.random((24, 24)).astype(np.float32) for _ in range(4)]
    _simulated_guarded_call(
        provider, maps, [1.0, 2.0, 3.0, 4.0], ["a", "b", "c", "d"], budget=MapBudget(), capture=False
    )
    guard = next(s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm")
    events = [e for e in guard.events if e.name == "fastrm.token"]
    assert [e.attributes["fastrm.token.index"] for e in events] == [0, 1, 2, 3]
    assert [e.attributes["fastrm.token.entropy"] for e in events] == [1.0, 2.0, 3.0, 4.0]
    assert [e.attributes["fastrm.token.scored"] for e in events] == [True, True, False, False]
    for event, original in zip(events, maps, strict=True):
        assert "fastrm.token.text" not in event.attributes
        decoded = map_from_attributes(event.attributes)
        step = (original.max() - original.min()) / 255
        assert np.abs(decoded - original).max() <= step / 2 + 1e-6
    for span in exporter.get_finished_spans():
        assert "gen_ai.input.messages" not in span.attributes


def test_content_capture_adds_text(memory):
    provider, exporter = memory
    maps = [np.eye(3)] * 2
    _simulated_guarded_call(provider, maps, [1.0, 2.0], ["red", "</s>"], budget=MapBudget(), capture=True)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    chat, guard = spans["chat tiny-llava"], spans["apply_guardrail fastrm"]
    tokens = [e for e in guard.events if e.name == "fastrm.token"]
    assert [e.attributes["fastrm.token.text"] for e in tokens] == ["red", "</s>"]
    assert message_text(chat.attributes["gen_ai.input.messages"]) == "What colour is the square?"
    assert message_text(chat.attributes["gen_ai.output.messages"]) == "red"
    assert json.loads(chat.attributes["gen_ai.output.messages"])[0]["finish_reason"] == "stop"


def test_budget_drops_are_reported_on_the_span(memory):
    provider, exporter = memory
    maps = [np.random.default_rng(i).random((24, 24)) for i in range(10)]
    plan = _simulated_guarded_call(
        provider, maps, [1.0] * 10, list("abcdefghij"), budget=MapBudget(max_bytes=1000), capture=False
    )
    guard = next(s for s in exporter.get_finished_spans() if s.name == "apply_guardrail fastrm")
    assert guard.attributes["fastrm.maps.attached"] == 2 and guard.attributes["fastrm.maps.dropped"] == 8
    assert guard.attributes["fastrm.maps.bits"] == 4
    with_map = [e.attributes["fastrm.token.index"] for e in guard.events if "fastrm.map.data" in e.attributes]
    assert with_map == [0, 1] == sorted(plan.encoded)


def test_on_error_decision_attributes():
    decision = decide_on_error(load_policy("strict"), RuntimeError("boom"))
    attrs = guardrail_attributes(decision, flagged=False)
    assert attrs["fastrm.guardrail.unguarded"] is True
    assert attrs["fastrm.guardrail.rule"] == "on_error"
    assert "fastrm.guardrail.verdict" not in attrs and "fastrm.guardrail.score" not in attrs


def test_escalation_target_attribute(tmp_path):
    from policies import parse_policy

    p = parse_policy(
        f"id: p\nversion: 1\ndefault: {{action: escalate, escalation: {{queue: {tmp_path / 'q.jsonl'}}}}}\n"
    )
    d = decide(p, DecisionContext(verdict="confident"))
    assert guardrail_attributes(d)["fastrm.guardrail.escalation.target"] == f"queue:{tmp_path / 'q.jsonl'}"


def test_attribute_values_are_plain_python():
    attrs = token_event_attributes(np.int64(3), np.float32(0.5), entropy_normalized=np.float64(0.25))
    assert attrs == {"fastrm.token.index": 3, "fastrm.token.entropy": 0.5, "fastrm.token.entropy_normalized": 0.25}
    assert all(type(v) in (int, float) for v in attrs.values())


@pytest.mark.parametrize(
    "env, explicit, expected",
    [
        (None, None, False),
        ("true", None, True),
        ("SPAN_ONLY", None, True),
        ("false", None, False),
        ("no_content", None, False),
        ("true", False, False),
        (None, True, True),
    ],
)
def test_content_capture_switch(monkeypatch, env, explicit, expected):
    if env is None:
        monkeypatch.delenv(semconv.CAPTURE_CONTENT_ENV, raising=False)
    else:
        monkeypatch.setenv(semconv.CAPTURE_CONTENT_ENV, env)
    assert content_capture_enabled(explicit) is expected


def test_message_text_tolerates_garbage():
    assert message_text("not json") == "" and message_text('{"a": 1}') == "" and message_text('[{"parts": [1]}]') == ""
