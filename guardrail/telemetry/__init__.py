"""Telemetry of guarded calls: the hooks every call reports through (:mod:`~guardrail.telemetry.hooks`),
span attributes and their keys (:mod:`~guardrail.telemetry.attributes`, :mod:`~guardrail.telemetry.semconv`),
the compact map encoding (:mod:`~guardrail.telemetry.mapcodec`), the guard's metrics
(:mod:`~guardrail.telemetry.guard_metrics`), exporters and the JSONL trace format
(:mod:`~guardrail.telemetry.exporters`, :mod:`~guardrail.telemetry.otlp_json`), the verdict as a viewer's
label (:mod:`~guardrail.telemetry.annotations`, :mod:`~guardrail.telemetry.phoenix`,
:mod:`~guardrail.telemetry.mlflow`, :mod:`~guardrail.telemetry.viewers`), the map as a picture
(:mod:`~guardrail.telemetry.map_image`), the CLI's set-up (:mod:`~guardrail.telemetry.setup`) and the
helpers that keep telemetry errors out of the call (:mod:`~guardrail.telemetry.safe_span`).

The attribute helpers keep their former import path: ``from guardrail.telemetry import MapBudget``.
"""

from fastrm_common.lazy import lazy_exports

_ATTRIBUTES = [
    "DEFAULT_MAP_BUDGET_BYTES", "MapBudget", "MapPlan", "batch_content_attributes", "chat_attributes",
    "chat_content_attributes", "content_capture_enabled", "decode_map", "encode_map", "encoded_nbytes", "get_tracer",
    "guardrail_attributes", "guardrail_messages_attributes", "guardrail_result_event_attributes", "image_attributes",
    "image_data_uri", "image_reference", "input_messages_json", "map_attributes", "map_budget_attributes",
    "map_from_attributes", "message_text", "messages_attributes", "openai_chat_attributes", "output_messages_json",
    "token_event_attributes",
    "verdict_label",
]
__getattr__, __dir__ = lazy_exports(__name__, {name: "guardrail.telemetry.attributes" for name in _ATTRIBUTES},
                                    globals(), sorted(_ATTRIBUTES))
