"""guardrail: guarded generation for vision-language models, with FastRM maps, calibrated verdicts and policies.

    >>> from guardrail import Guard
    >>> guard = Guard.from_pretrained("reference")
    >>> result = guard.generate("scene.png", "What color is the circle?")
    >>> result.verdict, result.action, result.text

Telemetry: the Guard uses the OpenTelemetry API; :func:`configure_tracing` sets up the SDK
(console, JSONL file, OTLP/HTTP) for applications that have none.
"""

import sys
from typing import TYPE_CHECKING

from fastrm_common.lazy import lazy_exports

# Names load on first use (PEP 562): ``guardrail --help`` and ``guardrail policy check`` must not
# pay for torch, which ``guardrail.guard`` imports.
_LAZY = {
    "JsonlFileSpanExporter": "guardrail.telemetry.exporters",
    "configure_tracing": "guardrail.telemetry.exporters",
    "Guard": "guardrail.guard",
    "GuardHooks": "guardrail.telemetry.hooks",
    "RowReport": "guardrail.telemetry.hooks",
    "load_image": "guardrail.guard",
    "Limits": "guardrail.limits",
    "read_trace_jsonl": "guardrail.telemetry.otlp_json",
    "BatchItemError": "guardrail.result",
    "GuardResult": "guardrail.result",
    "Claim": "guardrail.result",
    "Timings": "guardrail.result",
    "TokenEvent": "guardrail.result",
    "MapBudget": "guardrail.telemetry.attributes",
    "decode_map": "guardrail.telemetry.attributes",
    "encode_map": "guardrail.telemetry.attributes",
}

if TYPE_CHECKING:
    from guardrail.telemetry.exporters import JsonlFileSpanExporter, configure_tracing
    from guardrail.guard import Guard, load_image
    from guardrail.telemetry.hooks import GuardHooks, RowReport
    from guardrail.limits import Limits
    from guardrail.telemetry.otlp_json import read_trace_jsonl
    from guardrail.result import BatchItemError, Claim, GuardResult, Timings, TokenEvent
    from guardrail.telemetry.attributes import MapBudget, decode_map, encode_map




__all__ = [
    "BatchItemError",
    "Claim",
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

_lazy_getattr, __dir__ = lazy_exports(__name__, _LAZY, globals(), __all__)

#: modules that moved when ``guardrail/`` was laid out by the stages of a call (issue 25): the old
#: import paths keep working (``import guardrail.exporters`` gives ``guardrail.telemetry.exporters``)
MOVED_MODULES = {
    "guardrail.signals": "guardrail.answers.token_signals",
    "guardrail.scoring": "guardrail.answers.pipeline",
    "guardrail.instrumentation": "guardrail.telemetry.hooks",
    "guardrail.semconv": "guardrail.telemetry.semconv",
    "guardrail.mapcodec": "guardrail.telemetry.mapcodec",
    "guardrail.metrics": "guardrail.telemetry.guard_metrics",
    "guardrail.contained": "guardrail.telemetry.safe_span",
    "guardrail.exporters": "guardrail.telemetry.exporters",
    "guardrail.otlp_json": "guardrail.telemetry.otlp_json",
    "guardrail.phoenix": "guardrail.telemetry.phoenix",
    "guardrail.telemetry_setup": "guardrail.telemetry.setup",
    "guardrail.trace_calls": "guardrail.traces.calls",
    "guardrail.viewer": "guardrail.traces.viewer",
    "guardrail.report": "guardrail.traces.report",
    "guardrail.render": "guardrail.traces.render",
    "guardrail.demo": "guardrail.cli.demo",
    "guardrail.serve_cli": "guardrail.cli.serve",
    "guardrail.serve.metrics": "guardrail.serve.http_metrics",
}


class _MovedModuleFinder:
    """Resolves a moved module's old path to the module at its new path (the same module object)."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        new = MOVED_MODULES.get(fullname)
        if new is None:
            return None
        import importlib.util

        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(new))


class _MovedModuleLoader:
    def __init__(self, new: str) -> None:
        self.new = new

    def create_module(self, spec):
        import importlib

        return importlib.import_module(self.new)

    def exec_module(self, module) -> None:  # the module is already executed at its new path
        pass


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedModuleFinder())


def __getattr__(name: str):
    if f"guardrail.{name}" in MOVED_MODULES:  # ``from guardrail import semconv``
        import importlib

        return importlib.import_module(f"guardrail.{name}")
    return _lazy_getattr(name)
