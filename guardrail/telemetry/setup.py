"""Tracing and metrics providers from the command line's telemetry options (``guardrail run`` and ``demo``)."""

from __future__ import annotations

__all__ = ["telemetry_from_args", "tracing_endpoints"]


def telemetry_from_args(args, *, jsonl_path=None):
    """(tracer provider, meter provider) for the options of :func:`telemetry_args`; the standard
    ``OTEL_EXPORTER_OTLP_*`` variables apply when no endpoint is given."""
    from guardrail.telemetry.exporters import configure_metrics, configure_tracing

    provider = configure_tracing(jsonl_path=jsonl_path, console=getattr(args, "console_spans", False),
                                 **tracing_endpoints(args))
    meters = configure_metrics(otlp_endpoint=args.otlp_endpoint)
    return provider, meters


def tracing_endpoints(args) -> dict:
    """``configure_tracing`` arguments for ``--otlp-endpoint`` and ``--phoenix``: with ``--phoenix`` alone
    the spans go to Phoenix; with both, to the collector, and the annotations to Phoenix. Without either,
    the ``OTEL_EXPORTER_OTLP_*`` variables apply and a Phoenix or MLflow behind them is detected."""
    from guardrail.telemetry.viewers import viewer_exporters

    phoenix = getattr(args, "phoenix", None)
    if not phoenix:
        return {"otlp_endpoint": args.otlp_endpoint}
    return {"otlp_endpoint": args.otlp_endpoint or phoenix, "exporters": viewer_exporters(phoenix, "phoenix"),
            "viewer": "auto" if args.otlp_endpoint else "phoenix"}
