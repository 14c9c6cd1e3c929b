"""Our GenAI attribute names equal those of the OpenTelemetry semantic-conventions package."""

from __future__ import annotations

import pytest

from guardrail import semconv

gen_ai = pytest.importorskip("opentelemetry.semconv._incubating.attributes.gen_ai_attributes")
error = pytest.importorskip("opentelemetry.semconv.attributes.error_attributes")


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ("GEN_AI_OPERATION_NAME", "GEN_AI_OPERATION_NAME"),
        ("GEN_AI_PROVIDER_NAME", "GEN_AI_PROVIDER_NAME"),
        ("GEN_AI_REQUEST_MODEL", "GEN_AI_REQUEST_MODEL"),
        ("GEN_AI_RESPONSE_MODEL", "GEN_AI_RESPONSE_MODEL"),
        ("GEN_AI_REQUEST_MAX_TOKENS", "GEN_AI_REQUEST_MAX_TOKENS"),
        ("GEN_AI_REQUEST_TEMPERATURE", "GEN_AI_REQUEST_TEMPERATURE"),
        ("GEN_AI_REQUEST_TOP_P", "GEN_AI_REQUEST_TOP_P"),
        ("GEN_AI_USAGE_INPUT_TOKENS", "GEN_AI_USAGE_INPUT_TOKENS"),
        ("GEN_AI_USAGE_OUTPUT_TOKENS", "GEN_AI_USAGE_OUTPUT_TOKENS"),
        ("GEN_AI_RESPONSE_FINISH_REASONS", "GEN_AI_RESPONSE_FINISH_REASONS"),
        ("GEN_AI_INPUT_MESSAGES", "GEN_AI_INPUT_MESSAGES"),
        ("GEN_AI_OUTPUT_MESSAGES", "GEN_AI_OUTPUT_MESSAGES"),
        ("GEN_AI_EVALUATION_NAME", "GEN_AI_EVALUATION_NAME"),
        ("GEN_AI_EVALUATION_SCORE_VALUE", "GEN_AI_EVALUATION_SCORE_VALUE"),
        ("GEN_AI_EVALUATION_SCORE_LABEL", "GEN_AI_EVALUATION_SCORE_LABEL"),
        ("GEN_AI_EVALUATION_EXPLANATION", "GEN_AI_EVALUATION_EXPLANATION"),
    ],
)
def test_gen_ai_names_match_the_conventions(ours, theirs):
    if not hasattr(gen_ai, theirs):
        pytest.skip(f"{theirs} not in this semantic-conventions version")
    assert getattr(semconv, ours) == getattr(gen_ai, theirs)


def test_operation_and_error_names():
    assert semconv.GEN_AI_OPERATION_CHAT == gen_ai.GenAiOperationNameValues.CHAT.value
    assert semconv.ERROR_TYPE == error.ERROR_TYPE


def test_span_names():
    assert semconv.GUARDRAIL_SPAN_NAME == "apply_guardrail fastrm"
    assert semconv.chat_span_name("llava-1.5-7b") == "chat llava-1.5-7b"
    assert semconv.chat_span_name("") == "chat"


def _dotted_constants() -> dict[str, str]:
    return {k: v for k, v in vars(semconv).items() if k.isupper() and isinstance(v, str) and "." in v and " " not in v}


def test_attribute_keys_are_unique():
    keys = [v for k, v in _dotted_constants().items() if k != "GUARDRAIL_RESULT_EVENT"]  # a documented alias
    assert len(keys) > 40
    assert len(keys) == len(set(keys))
    assert semconv.GUARDRAIL_RESULT_EVENT == semconv.EVALUATION_RESULT_EVENT


def test_every_gen_ai_key_is_an_official_one():
    """No key of ours squats the official gen_ai namespace: each gen_ai.* value is defined by the package
    (attributes, metrics) or, for the evaluation event whose name has no Python constant yet, by the spec."""
    metrics = pytest.importorskip("opentelemetry.semconv._incubating.metrics.gen_ai_metrics")
    official = {v for k, v in vars(gen_ai).items() if k.startswith("GEN_AI_") and isinstance(v, str)}
    official |= {v for k, v in vars(metrics).items() if k.startswith("GEN_AI_") and isinstance(v, str)}
    official.add("gen_ai.evaluation.result")  # semantic-conventions gen-ai-events.md, Event: gen_ai.evaluation.result
    ours = {v for v in _dotted_constants().values() if v.startswith("gen_ai.")}
    assert len(ours) >= 20
    assert ours <= official, sorted(ours - official)


def test_our_keys_live_under_fastrm_or_a_known_convention():
    prefixes = ("gen_ai.", "fastrm.", "error.", "openinference.", "input.", "output.", "llm.", "message.",
                "message_content.", "image.", "http.", "url.", "server.", "network.",  # + OpenTelemetry HTTP (serve)
                "mlflow.")  # MLflow's own span inputs/outputs (its chat view)
    bad = {k: v for k, v in _dotted_constants().items() if not v.startswith(prefixes)}
    assert not bad


def test_openinference_keys_match_the_openinference_package():
    oi = pytest.importorskip("openinference.semconv.trace")
    S, M, C, I = oi.SpanAttributes, oi.MessageAttributes, oi.MessageContentAttributes, oi.ImageAttributes
    pairs = [
        (semconv.OPENINFERENCE_SPAN_KIND, S.OPENINFERENCE_SPAN_KIND),
        (semconv.INPUT_VALUE, S.INPUT_VALUE), (semconv.INPUT_MIME_TYPE, S.INPUT_MIME_TYPE),
        (semconv.OUTPUT_VALUE, S.OUTPUT_VALUE), (semconv.OUTPUT_MIME_TYPE, S.OUTPUT_MIME_TYPE),
        (semconv.LLM_MODEL_NAME, S.LLM_MODEL_NAME), (semconv.LLM_INVOCATION_PARAMETERS, S.LLM_INVOCATION_PARAMETERS),
        (semconv.LLM_TOKEN_COUNT_PROMPT, S.LLM_TOKEN_COUNT_PROMPT),
        (semconv.LLM_TOKEN_COUNT_COMPLETION, S.LLM_TOKEN_COUNT_COMPLETION),
        (semconv.LLM_TOKEN_COUNT_TOTAL, S.LLM_TOKEN_COUNT_TOTAL),
        (semconv.LLM_INPUT_MESSAGES, S.LLM_INPUT_MESSAGES), (semconv.LLM_OUTPUT_MESSAGES, S.LLM_OUTPUT_MESSAGES),
        (semconv.METADATA, S.METADATA),
        (semconv.MESSAGE_ROLE, M.MESSAGE_ROLE), (semconv.MESSAGE_CONTENT, M.MESSAGE_CONTENT),
        (semconv.MESSAGE_CONTENTS, M.MESSAGE_CONTENTS),
        (semconv.MESSAGE_CONTENT_TYPE, C.MESSAGE_CONTENT_TYPE), (semconv.MESSAGE_CONTENT_TEXT, C.MESSAGE_CONTENT_TEXT),
        (semconv.MESSAGE_CONTENT_IMAGE, C.MESSAGE_CONTENT_IMAGE), (semconv.IMAGE_URL, I.IMAGE_URL),
    ]
    for ours, theirs in pairs:
        assert ours == theirs
    assert semconv.OPENINFERENCE_KIND_LLM == oi.OpenInferenceSpanKindValues.LLM.value
    assert semconv.OPENINFERENCE_KIND_GUARDRAIL == oi.OpenInferenceSpanKindValues.GUARDRAIL.value
    assert semconv.MIME_TEXT == oi.OpenInferenceMimeTypeValues.TEXT.value
    assert semconv.MIME_JSON == oi.OpenInferenceMimeTypeValues.JSON.value


def test_metric_names_match_the_conventions():
    metrics = pytest.importorskip("opentelemetry.semconv._incubating.metrics.gen_ai_metrics")
    assert semconv.GEN_AI_CLIENT_OPERATION_DURATION == metrics.GEN_AI_CLIENT_OPERATION_DURATION
    assert semconv.GEN_AI_CLIENT_TOKEN_USAGE == metrics.GEN_AI_CLIENT_TOKEN_USAGE
    assert semconv.GEN_AI_TOKEN_TYPE == gen_ai.GEN_AI_TOKEN_TYPE
    assert semconv.GEN_AI_TOKEN_TYPE_INPUT == gen_ai.GenAiTokenTypeValues.INPUT.value
    assert semconv.GEN_AI_TOKEN_TYPE_OUTPUT == gen_ai.GenAiTokenTypeValues.OUTPUT.value
