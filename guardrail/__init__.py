"""guardrail: guarded generation for vision-language models, with FastRM maps, calibrated verdicts and policies.

    >>> from guardrail import Guard
    >>> guard = Guard.from_pretrained("reference")
    >>> result = guard.generate("scene.png", "What color is the circle?")
    >>> result.verdict, result.action, result.text

Telemetry: the Guard uses the OpenTelemetry API; :func:`configure_tracing` sets up the SDK
(console, JSONL file, OTLP/HTTP) for applications that have none.
"""

from typing import TYPE_CHECKING

from fastrm_common.lazy import lazy_exports

# Names load on first use (PEP 562): ``guardrail --help`` and ``guardrail policy check`` must not
# pay for torch, which ``guardrail.guard`` imports.
_LAZY = {
    "JsonlFileSpanExporter": "guardrail.exporters",
    "configure_tracing": "guardrail.exporters",
    "Guard": "guardrail.guard",
    "GuardHooks": "guardrail.instrumentation",
    "RowReport": "guardrail.instrumentation",
    "load_image": "guardrail.guard",
    "Limits": "guardrail.limits",
    "read_trace_jsonl": "guardrail.otlp_json",
    "BatchItemError": "guardrail.result",
    "GuardResult": "guardrail.result",
    "Timings": "guardrail.result",
    "TokenEvent": "guardrail.result",
    "MapBudget": "guardrail.telemetry",
    "decode_map": "guardrail.telemetry",
    "encode_map": "guardrail.telemetry",
}

if TYPE_CHECKING:
    from guardrail.exporters import JsonlFileSpanExporter, configure_tracing
    from guardrail.guard import Guard, load_image
    from guardrail.instrumentation import GuardHooks, RowReport
    from guardrail.limits import Limits
    from guardrail.otlp_json import read_trace_jsonl
    from guardrail.result import BatchItemError, GuardResult, Timings, TokenEvent
    from guardrail.telemetry import MapBudget, decode_map, encode_map




__all__ = [
    "BatchItemError",
    "Guard",
    "GuardHooks",
    "GuardResult",
    "JsonlFileSpanExporter",
    "Limits",
    "MapBudget",
    "RowReport",
    "Timings",
    "TokenEvent",
    "configure_tracing",
    "decode_map",
    "encode_map",
    "load_image",
    "read_trace_jsonl",
]

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)
