"""Every span name, attribute key and event name fastrm-guard emits, in one place.

Three families (the full table with types and units is ``docs/telemetry.md``):

- ``gen_ai.*`` keys, each one defined by the OpenTelemetry GenAI semantic
  conventions (``opentelemetry-semantic-conventions``; a test checks every
  ``gen_ai.*`` value here against the package's constants): operation, model,
  token usage, finish reasons, opt-in message content, and the evaluation keys
  of the ``gen_ai.evaluation.result`` event;
- OpenInference keys (``openinference.span.kind``, ``input.value``,
  ``llm.*`` ...), written beside the GenAI ones so that Arize Phoenix and other
  OpenInference viewers show the spans natively (checked against
  ``openinference-semantic-conventions`` in the tests);
- ``fastrm.*`` keys for everything that is ours: the guard's verdict and
  decision (``fastrm.guardrail.*``; the GenAI conventions define no guardrail
  attributes, and custom keys must not squat an official namespace), per-token
  events with the token's entropy and its compactly encoded map, map budget
  counters, image reference.

Span tree of one guarded call::

    chat {model}                        kind INTERNAL, openinference.span.kind LLM
    └── apply_guardrail fastrm          kind INTERNAL, openinference.span.kind GUARDRAIL
        ├── event fastrm.token  (x N)   one per generated token, map attached if the budget allows
        └── event gen_ai.evaluation.result

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
# GenAI client metrics and their token-type attribute (gen_ai_metrics, gen_ai_attributes).
GEN_AI_CLIENT_OPERATION_DURATION = "gen_ai.client.operation.duration"
GEN_AI_CLIENT_TOKEN_USAGE = "gen_ai.client.token.usage"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
GEN_AI_TOKEN_TYPE_INPUT = "input"
GEN_AI_TOKEN_TYPE_OUTPUT = "output"

# --- Our metrics (guardrail.telemetry.guard_metrics)
METRIC_VERDICTS = "fastrm.guardrail.verdicts"
METRIC_ACTIONS = "fastrm.guardrail.actions"
METRIC_ANSWER_SCORE = "fastrm.guardrail.answer_score"
METRIC_THRESHOLD_DISTANCE = "fastrm.guardrail.threshold_distance"
METRIC_GUARD_DURATION = "fastrm.guardrail.duration"

# --- Span names
CHAT_SPAN_PREFIX = "chat"
GUARDRAIL_OPERATION = "apply_guardrail"
GUARDRAIL_NAME = "fastrm"
GUARDRAIL_SPAN_NAME = f"{GUARDRAIL_OPERATION} {GUARDRAIL_NAME}"  # "apply_guardrail fastrm"
# Names of the verdict notes posted to viewers (Phoenix annotations, MLflow assessments), not span keys.
VERDICT_NOTE_NAME = GUARDRAIL_NAME  # label confident / uncertain / unscored / unguarded, explanation
ACTION_NOTE_NAME = f"{GUARDRAIL_NAME}.action"  # label: the policy's action
SCORE_NOTE_NAME = f"{GUARDRAIL_NAME}.score"  # Phoenix only: the score, apart (its chip shows a score over a label)

# --- Guardrail span / evaluation event attributes (ours, so under fastrm.)
GUARDRAIL_NAME_KEY = "fastrm.guardrail.name"
GUARDRAIL_VERDICT = "fastrm.guardrail.verdict"
GUARDRAIL_SCORE = "fastrm.guardrail.score"
GUARDRAIL_THRESHOLD = "fastrm.guardrail.threshold"
GUARDRAIL_POLICY_ID = "fastrm.guardrail.policy.id"
GUARDRAIL_POLICY_VERSION = "fastrm.guardrail.policy.version"
GUARDRAIL_ACTION = "fastrm.guardrail.action"
GUARDRAIL_RULE = "fastrm.guardrail.rule"
GUARDRAIL_REASON = "fastrm.guardrail.reason"
# What decided the verdict (score vs threshold, the novelty gate, no threshold, nothing to score), in words.
GUARDRAIL_VERDICT_REASON = "fastrm.guardrail.verdict_reason"
# What the caller should know about the call (content cropped away, an empty answer), in words.
GUARDRAIL_WARNINGS = "fastrm.guardrail.warnings"
GUARDRAIL_FLAGGED = "fastrm.guardrail.flagged"
GUARDRAIL_UNGUARDED = "fastrm.guardrail.unguarded"
GUARDRAIL_ESCALATION_TARGET = "fastrm.guardrail.escalation.target"
# Content capture only: the model's own answer (also when an action withheld it) and the text returned instead.
GUARDRAIL_ANSWER = "fastrm.guardrail.answer"
GUARDRAIL_RETURNED_TEXT = "fastrm.guardrail.returned_text"
GUARDRAIL_QUESTION = "fastrm.guardrail.question"  # batches only: the row's question
# The GenAI conventions' evaluation event (gen-ai-events.md, "Event: gen_ai.evaluation.result");
# the event name has no constant in the Python package yet.
EVALUATION_RESULT_EVENT = "gen_ai.evaluation.result"
GUARDRAIL_RESULT_EVENT = EVALUATION_RESULT_EVENT

# --- OpenInference (Arize) keys, beside the GenAI ones
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
OPENINFERENCE_KIND_LLM = "LLM"
OPENINFERENCE_KIND_GUARDRAIL = "GUARDRAIL"
OPENINFERENCE_KIND_CHAIN = "CHAIN"  # guardrail serve's request span: a request wrapping the LLM call
INPUT_VALUE = "input.value"
INPUT_MIME_TYPE = "input.mime_type"
OUTPUT_VALUE = "output.value"
OUTPUT_MIME_TYPE = "output.mime_type"
MIME_TEXT = "text/plain"
MIME_JSON = "application/json"
LLM_MODEL_NAME = "llm.model_name"
LLM_INVOCATION_PARAMETERS = "llm.invocation_parameters"
LLM_TOKEN_COUNT_PROMPT = "llm.token_count.prompt"
LLM_TOKEN_COUNT_COMPLETION = "llm.token_count.completion"
LLM_TOKEN_COUNT_TOTAL = "llm.token_count.total"
LLM_INPUT_MESSAGES = "llm.input_messages"  # flattened: llm.input_messages.0.message.role ...
LLM_OUTPUT_MESSAGES = "llm.output_messages"
MESSAGE_ROLE = "message.role"
MESSAGE_CONTENT = "message.content"
MESSAGE_CONTENTS = "message.contents"
MESSAGE_CONTENT_TYPE = "message_content.type"
MESSAGE_CONTENT_TEXT = "message_content.text"
MESSAGE_CONTENT_IMAGE = "message_content.image"
IMAGE_URL = "image.url"
METADATA = "metadata"

# --- MLflow's own span inputs/outputs (JSON). Set on the chat span under content capture in OpenAI's chat format
# (request messages, response choices), which MLflow's trace view renders as a chat with the image; without
# them MLflow takes input.value / output.value (plain text, no chat view).
MLFLOW_SPAN_INPUTS = "mlflow.spanInputs"
MLFLOW_SPAN_OUTPUTS = "mlflow.spanOutputs"

# --- FastRM attributes (guardrail span)
FASTRM_SCORE_AGGREGATION = "fastrm.score.aggregation"
FASTRM_SCORE_NAME = "fastrm.score.name"  # the score the verdict applies to ("none": observe-only)
FASTRM_SCORES_PREFIX = "fastrm.scores."  # + score name: every score of the answer (higher = more uncertain)
FASTRM_ANSWER_TOKENS = "fastrm.answer_tokens"
FASTRM_MAX_TOKEN_ENTROPY = "fastrm.max_token_entropy"
FASTRM_MAP_GRID = "fastrm.map.grid"
#: JSON list of the image regions the maps are flat over: ``[{"image", "kind", "grid"}]`` in order.
FASTRM_MAP_REGIONS = "fastrm.map.regions"
FASTRM_PROXY_ID = "fastrm.proxy.id"
FASTRM_CALIBRATION_ID = "fastrm.calibration.id"
FASTRM_MODEL_DURATION = "fastrm.duration.model_s"
FASTRM_GUARD_DURATION = "fastrm.duration.guard_s"
FASTRM_MAPS_ATTACHED = "fastrm.maps.attached"
FASTRM_MAPS_DROPPED = "fastrm.maps.dropped"
FASTRM_TOKEN_EVENTS_DROPPED = "fastrm.token_events.dropped"  # tokens left without an event (span event limit)
FASTRM_MAPS_BITS = "fastrm.maps.bits"
FASTRM_MAPS_BYTES = "fastrm.maps.bytes"
FASTRM_MAPS_BUDGET_BYTES = "fastrm.maps.budget_bytes"
FASTRM_MAPS_FILE = "fastrm.maps.file"
# The image of the call: its path (when it was given as a path; content capture only) and the SHA-256 of
# its RGB pixels (always; lets a reviewer match an escalation or a trace to an image without storing it).
FASTRM_IMAGE_PATH = "fastrm.image.path"
FASTRM_IMAGE_SHA256 = "fastrm.image.sha256"
FASTRM_IMAGE_SIZE = "fastrm.image.size"
# The part of the image the model saw (after the processor's resize and crop), [left, top, right, bottom]
# in original pixels: where the maps go (guardrail.traces.render.view_box).
FASTRM_IMAGE_BOX = "fastrm.image.box"
# Share of the image's area outside that box, set only when content lies there (GuardResult.image_cropped).
FASTRM_IMAGE_CROPPED = "fastrm.image.cropped"
# Calls guarded together in one padded generate_batch: the row of this call and the batch size.
FASTRM_BATCH_INDEX = "fastrm.batch.index"
FASTRM_BATCH_SIZE = "fastrm.batch.size"
# This row's own token counts (its prompt without padding, its generated tokens); the chat span sums them.
FASTRM_INPUT_TOKENS = "fastrm.usage.input_tokens"
FASTRM_OUTPUT_TOKENS = "fastrm.usage.output_tokens"

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

# --- Per-claim event (on the guardrail span): one per claim of the answer
CLAIM_EVENT = "fastrm.claim"
#: a guard span's child of kind LLM that carries its messages, the answer's map as a picture among them
MAP_VIEW_SPAN_NAME = "fastrm map"
CLAIM_INDEX = "fastrm.claim.index"
CLAIM_START = "fastrm.claim.start"
CLAIM_END = "fastrm.claim.end"
CLAIM_KIND = "fastrm.claim.kind"
CLAIM_VERDICT = "fastrm.claim.verdict"
CLAIM_SCORE = "fastrm.claim.score"
CLAIM_REDACTED = "fastrm.claim.redacted"
CLAIM_TEXT = "fastrm.claim.text"  # content capture only
CLAIMS_COUNT = "fastrm.claims.count"
FASTRM_BATCH_ROWS_IN_MESSAGES = "fastrm.batch.rows_in_messages"  # a batch's rows whose messages fit the chat span
CLAIM_NOTE_PREFIX = "fastrm.claim."  # + index: the viewers' annotation (Phoenix) or assessment (MLflow) of one claim
CLAIMS_UNCERTAIN = "fastrm.claims.uncertain"
CLAIMS_REDACTED = "fastrm.claims.redacted"

# --- guardrail serve (HTTP server spans; OpenTelemetry HTTP semantic conventions plus our own)
HTTP_REQUEST_METHOD = "http.request.method"
HTTP_ROUTE = "http.route"
HTTP_RESPONSE_STATUS_CODE = "http.response.status_code"
URL_PATH = "url.path"
SERVER_ADDRESS = "server.address"
NETWORK_PROTOCOL_NAME = "network.protocol.name"
SERVE_BATCH_SIZE = "fastrm.serve.batch.size"
SERVE_VERDICT = "fastrm.serve.verdict"  # the request's verdict label: confident, uncertain, unscored, unguarded
SERVE_ACTION = "fastrm.serve.action"
SERVE_SCORE = "fastrm.serve.score"
SERVE_REASON = "fastrm.serve.reason"

# --- Environment
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


def guardrail_span_name(index: int | None = None) -> str:
    """The guard span's name: ``"apply_guardrail fastrm"``, or with a batch row's 0-based index
    ``"apply_guardrail fastrm [2]"`` (so a viewer's span tree tells the rows apart)."""
    return GUARDRAIL_SPAN_NAME if index is None else f"{GUARDRAIL_SPAN_NAME} [{index}]"


def is_guardrail_span(name: str) -> bool:
    """Whether a span name is a guard span's (:func:`guardrail_span_name`, with or without a row index)."""
    return name == GUARDRAIL_SPAN_NAME or name.startswith(GUARDRAIL_SPAN_NAME + " [")


def chat_span_name(model: str) -> str:
    """The GenAI span name for a chat call: ``chat_span_name("llava-1.5-7b") == "chat llava-1.5-7b"``."""
    return f"{CHAT_SPAN_PREFIX} {model}" if model else CHAT_SPAN_PREFIX
