"""Every span name, attribute key and event name fastrm-guard emits, in one place.

Three families (the full table with types and units is ``docs/telemetry.md``):

- ``gen_ai.*`` keys from the OpenTelemetry GenAI semantic conventions, on the
  ``chat {model}`` span (operation, model, token usage, finish reasons, opt-in
  message content) and the evaluation keys on the guardrail result event;
- ``gen_ai.guardrail.*`` keys for the guard's verdict and decision, on the
  ``apply_guardrail fastrm`` span and its ``gen_ai.guardrail.result`` event
  (the GenAI conventions have no guardrail namespace yet; we use this one);
- ``fastrm.*`` keys for what is specific to FastRM: per-token events with the
  token's entropy and its compactly encoded relevancy map, map budget counters.

Span tree of one guarded call::

    chat {model}                       kind INTERNAL, gen_ai.operation.name = "chat"
    └── apply_guardrail fastrm         kind INTERNAL, verdict / score / policy / action
        ├── event fastrm.token  (x N)  one per generated token, map attached if the budget allows
        └── event gen_ai.guardrail.result

Only plain string constants live here (no OpenTelemetry import).
"""

from __future__ import annotations

# --- GenAI semantic conventions (opentelemetry-semantic-conventions, gen_ai_attributes)
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_OPERATION_CHAT = "chat"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_TOP_P = "gen_ai.request.top_p"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
# Opt-in content (JSON strings in the conventions' message format); only with content capture.
GEN_AI_INPUT_MESSAGES = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES = "gen_ai.output.messages"
# Evaluation keys, repeated on the guardrail result event so generic GenAI tooling sees a score.
GEN_AI_EVALUATION_NAME = "gen_ai.evaluation.name"
GEN_AI_EVALUATION_SCORE_VALUE = "gen_ai.evaluation.score.value"
GEN_AI_EVALUATION_SCORE_LABEL = "gen_ai.evaluation.score.label"
GEN_AI_EVALUATION_EXPLANATION = "gen_ai.evaluation.explanation"
# General conventions.
ERROR_TYPE = "error.type"

# --- Span names
CHAT_SPAN_PREFIX = "chat"
GUARDRAIL_OPERATION = "apply_guardrail"
GUARDRAIL_NAME = "fastrm"
GUARDRAIL_SPAN_NAME = f"{GUARDRAIL_OPERATION} {GUARDRAIL_NAME}"  # "apply_guardrail fastrm"

# --- Guardrail span / result event attributes
GUARDRAIL_NAME_KEY = "gen_ai.guardrail.name"
GUARDRAIL_VERDICT = "gen_ai.guardrail.verdict"
GUARDRAIL_SCORE = "gen_ai.guardrail.score"
GUARDRAIL_THRESHOLD = "gen_ai.guardrail.threshold"
GUARDRAIL_POLICY_ID = "gen_ai.guardrail.policy.id"
GUARDRAIL_POLICY_VERSION = "gen_ai.guardrail.policy.version"
GUARDRAIL_ACTION = "gen_ai.guardrail.action"
GUARDRAIL_RULE = "gen_ai.guardrail.rule"
GUARDRAIL_REASON = "gen_ai.guardrail.reason"
GUARDRAIL_FLAGGED = "gen_ai.guardrail.flagged"
GUARDRAIL_UNGUARDED = "gen_ai.guardrail.unguarded"
GUARDRAIL_ESCALATION_TARGET = "gen_ai.guardrail.escalation.target"
GUARDRAIL_RESULT_EVENT = "gen_ai.guardrail.result"

# --- FastRM attributes (guardrail span)
FASTRM_SCORE_AGGREGATION = "fastrm.score.aggregation"
FASTRM_ANSWER_TOKENS = "fastrm.answer_tokens"
FASTRM_MAX_TOKEN_ENTROPY = "fastrm.max_token_entropy"
FASTRM_MAP_GRID = "fastrm.map.grid"
FASTRM_PROXY_ID = "fastrm.proxy.id"
FASTRM_CALIBRATION_ID = "fastrm.calibration.id"
FASTRM_MODEL_DURATION = "fastrm.duration.model_s"
FASTRM_GUARD_DURATION = "fastrm.duration.guard_s"
FASTRM_MAPS_ATTACHED = "fastrm.maps.attached"
FASTRM_MAPS_DROPPED = "fastrm.maps.dropped"
FASTRM_MAPS_BITS = "fastrm.maps.bits"
FASTRM_MAPS_BYTES = "fastrm.maps.bytes"
FASTRM_MAPS_BUDGET_BYTES = "fastrm.maps.budget_bytes"
FASTRM_MAPS_FILE = "fastrm.maps.file"

# --- Per-token event (on the guardrail span)
TOKEN_EVENT = "fastrm.token"
TOKEN_INDEX = "fastrm.token.index"
TOKEN_ID = "fastrm.token.id"
TOKEN_TEXT = "fastrm.token.text"
TOKEN_ENTROPY = "fastrm.token.entropy"
TOKEN_ENTROPY_NORMALIZED = "fastrm.token.entropy_normalized"
TOKEN_SCORED = "fastrm.token.scored"
MAP_SHAPE = "fastrm.map.shape"
MAP_DTYPE = "fastrm.map.dtype"
MAP_SCALE = "fastrm.map.scale"
MAP_DATA = "fastrm.map.data"

# --- Environment
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def chat_span_name(model: str) -> str:
    """The GenAI span name for a chat call: ``chat_span_name("llava-1.5-7b") == "chat llava-1.5-7b"``."""
    return f"{CHAT_SPAN_PREFIX} {model}" if model else CHAT_SPAN_PREFIX
