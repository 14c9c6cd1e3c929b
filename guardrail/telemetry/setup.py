"""Tracing and metrics providers from the command line's telemetry options (``guardrail run`` and ``demo``)."""

from __future__ import annotations

__all__ = ["telemetry_from_args"]


def telemetry_from_args(args, *, jsonl_path=None):
    """(tracer provider, meter provider) for the options of :func:`telemetry_args`; the standard
    ``OTEL_EXPORTER_OTLP_*`` variables apply when no endpoint is given."""
    from guardrail.telemetry.exporters import configure_metrics, configure_tracing

    endpoint = args.otlp_endpoint or args.phoenix
    extra = []
    if args.phoenix:
        from guardrail.telemetry.phoenix import PhoenixAnnotationExporter

        extra.append(PhoenixAnnotationExporter(args.phoenix))
    provider = configure_tracing(jsonl_path=jsonl_path, console=args.console_spans, otlp_endpoint=endpoint,
                                 exporters=extra)
    meters = configure_metrics(otlp_endpoint=None if args.phoenix and not args.otlp_endpoint else endpoint)
    return provider, meters
