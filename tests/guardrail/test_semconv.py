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


def test_attribute_keys_are_unique():
    keys = [v for k, v in vars(semconv).items() if k.isupper() and isinstance(v, str) and "." in v and " " not in v]
    assert len(keys) > 40
    assert len(keys) == len(set(keys))
