"""Exporter setup for applications and the CLI (this module uses ``opentelemetry-sdk``).

Library code never imports this module; ``guardrail run/demo`` and
applications call :func:`configure_tracing` and pass the provider to the Guard.

- :class:`JsonlFileSpanExporter` appends one OTLP-JSON-shaped span per line
  (:mod:`guardrail.telemetry.otlp_json`), readable by :func:`read_trace_jsonl` and ``guardrail view``.
- :class:`BoundedSpanExporter` wraps any exporter so that one export, flush or
  shutdown never takes longer than a bound and never raises: a hanging
  exporter costs the caller at most ``timeout_s`` once, after which batches
  are dropped (with a log warning) until it returns.
- :func:`configure_tracing` builds a ``TracerProvider`` with a
  ``BatchSpanProcessor`` per exporter, each behind a ``BoundedSpanExporter``.
  Ending a span only enqueues it; ``force_flush`` and ``shutdown`` return within
  about ``export_timeout_s`` per exporter even if an exporter hangs or raises.

Example::

    >>> provider = configure_tracing(jsonl_path="trace.jsonl")   # doctest: +SKIP
    >>> guard = Guard.from_pretrained(..., tracer_provider=provider)  # doctest: +SKIP
    >>> provider.shutdown()                                           # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from fastrm_common.errors import GuardrailError

from guardrail.telemetry.otlp_json import read_trace_jsonl, span_to_dict

__all__ = [
    "BoundedSpanExporter",
    "JsonlFileSpanExporter",
    "configure_metrics",
    "configure_tracing",
    "otlp_endpoint_from_env",
    "read_trace_jsonl",
]

_log = logging.getLogger(__name__)

DEFAULT_SERVICE_NAME = "fastrm-guard"
_OTLP_ENV = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_OTLP_METRICS_ENV = ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")


class JsonlFileSpanExporter(SpanExporter):
    """Appends each exported span to ``path`` as one JSON line (OTLP-JSON shape, see :mod:`guardrail.telemetry.otlp_json`).

    Thread-safe (one lock per exporter); each batch is written with one
    ``write`` and the file is closed (so flushed) after every batch. Parent
    folders are created. Errors (unwritable file, unserialisable value) are
    logged and reported as ``FAILURE``, never raised.

    A write that fails half-way (a full disk) is undone: the file is truncated back to where the
    batch started. Should a partial line remain anyway (the truncation failed too, or another
    process crashed mid-line), the next batch starts on a fresh line, so one damaged line never
    swallows the spans after it (:func:`read_trace_jsonl` skips and reports it).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            text = "".join(json.dumps(span_to_dict(s), ensure_ascii=False, separators=(",", ":")) + "\n" for s in spans)
            with self._lock:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._append(text.encode("utf-8"))
        except (OSError, TypeError, ValueError) as exc:
            _log.warning("could not write %d span(s) to %s: %s", len(spans), self.path, exc)
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _append(self, data: bytes) -> None:
        """Append ``data`` (whole lines) after the file's last complete line; undo a partial write."""
        with open(self.path, "a+b") as f:
            start = f.seek(0, os.SEEK_END)
            if start > 0:
                f.seek(start - 1)
                if f.read(1) != b"\n":  # a partial line left by an earlier failure: end it first
                    data = b"\n" + data
            try:
                f.write(data)
                f.flush()
            except OSError:
                try:
                    f.truncate(start)  # a shorter file needs no space: drop the half-written batch
                except OSError:
                    pass  # the next batch starts on a fresh line anyway
                raise

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # every export is already on disk


class BoundedSpanExporter(SpanExporter):
    """Runs another exporter's calls in a helper thread and waits at most ``timeout_s``.

    - an exception from the wrapped exporter becomes ``FAILURE`` (logged);
    - an export still running after ``timeout_s`` becomes ``FAILURE``; while it
      keeps running, later batches are dropped at once (``FAILURE``, logged) so
      a hung backend costs one timeout, not one per batch;
    - ``shutdown`` and ``force_flush`` are bounded the same way.
    """

    def __init__(self, exporter: SpanExporter, timeout_s: float = 5.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.exporter = exporter
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        self._inflight: threading.Thread | None = None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self._inflight is not None and self._inflight.is_alive():
                _log.warning(
                    "%s is still busy with an earlier export; dropping %d span(s)",
                    type(self.exporter).__name__,
                    len(spans),
                )
                return SpanExportResult.FAILURE
            done, result, thread = self._start(lambda: self.exporter.export(spans), "export")
            self._inflight = thread
        if not done.wait(self.timeout_s):
            _log.warning(
                "%s did not finish exporting %d span(s) within %.1f s; giving up on them",
                type(self.exporter).__name__,
                len(spans),
                self.timeout_s,
            )
            return SpanExportResult.FAILURE
        value = result.get("value")
        return value if isinstance(value, SpanExportResult) else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        done, _, _ = self._start(self.exporter.shutdown, "shutdown")
        if not done.wait(self.timeout_s):
            _log.warning("%s did not shut down within %.1f s", type(self.exporter).__name__, self.timeout_s)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        bound = min(self.timeout_s, timeout_millis / 1000)
        done, result, _ = self._start(lambda: self.exporter.force_flush(int(bound * 1000)), "force_flush")
        return bool(done.wait(bound) and result.get("value"))

    def _start(self, call: Callable[[], Any], what: str) -> tuple[threading.Event, dict[str, Any], threading.Thread]:
        done = threading.Event()
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["value"] = call()
            except Exception:  # an exporter must never fail the caller; the failure is logged
                _log.exception("%s.%s raised", type(self.exporter).__name__, what)
            finally:
                done.set()

        thread = threading.Thread(target=run, name=f"fastrm-otel-{what}", daemon=True)
        thread.start()
        return done, result, thread


def otlp_endpoint_from_env(signal: str = "traces") -> str | None:
    """The OTLP endpoint set for ``signal`` (``"traces"`` or ``"metrics"``) by
    ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``, if any."""
    for name in _OTLP_METRICS_ENV if signal == "metrics" else _OTLP_ENV:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def configure_tracing(
    *,
    console: bool | TextIO = False,
    jsonl_path: str | os.PathLike[str] | None = None,
    otlp_endpoint: str | None = None,
    otlp_from_env: bool = True,
    exporters: Sequence[SpanExporter] = (),
    service_name: str | None = None,
    export_timeout_s: float = 5.0,
    set_global: bool = False,
    viewer: str | None = "auto",
) -> TracerProvider:
    """A ``TracerProvider`` exporting to the console, a JSONL file and/or OTLP/HTTP.

    - ``console``: True for stdout, or a text stream (e.g. ``sys.stderr``).
    - ``jsonl_path``: append spans to this file (see :class:`JsonlFileSpanExporter`).
    - ``otlp_endpoint``: an OTLP/HTTP collector, e.g. ``http://localhost:4318``
      (``/v1/traces`` is appended unless present). When None and
      ``otlp_from_env``, the standard ``OTEL_EXPORTER_OTLP_*`` variables enable
      and configure it (endpoint, headers, certificates, compression).
      Needs the ``otlp`` extra: ``pip install 'fastrm-guard[otlp]'``.
    - ``exporters``: further exporters of your own.
    - ``service_name``: the resource's ``service.name``; default
      ``OTEL_SERVICE_NAME`` or ``"fastrm-guard"`` (``OTEL_RESOURCE_ATTRIBUTES`` is honoured).
    - ``export_timeout_s``: the most one export/flush/shutdown of one exporter may take.
    - ``set_global``: also install the provider as the global one (possible once per process).
    - ``viewer``: what the OTLP endpoint is: ``"auto"`` asks it once (:func:`~guardrail.telemetry.viewers.detect_viewer`),
      ``"phoenix"`` or ``"mlflow"`` says so, None means a plain collector. At a Phoenix the verdicts
      are also posted as span annotations, at an MLflow server as assessments (and the spans carry
      the ``x-mlflow-experiment-id`` header: ``MLFLOW_EXPERIMENT_ID`` or ``0``, unless
      ``OTEL_EXPORTER_OTLP_*HEADERS`` name one), unless ``exporters`` has an annotation exporter already.

    Each exporter gets its own ``BatchSpanProcessor`` (queue size, batch size
    and delay from the standard ``OTEL_BSP_*`` variables) behind a
    :class:`BoundedSpanExporter`. Raises :class:`GuardrailError` when OTLP is
    requested but the exporter package is missing.
    """
    chosen: list[SpanExporter] = []
    if console:
        chosen.append(ConsoleSpanExporter(out=sys.stdout if console is True else console))
    if jsonl_path is not None:
        chosen.append(JsonlFileSpanExporter(jsonl_path))
    endpoint = otlp_endpoint or (otlp_endpoint_from_env() if otlp_from_env else None)
    annotations: list[SpanExporter] = []
    if endpoint:
        from guardrail.telemetry.annotations import AnnotationExporter
        from guardrail.telemetry.viewers import detect_viewer, viewer_exporters

        found = detect_viewer(endpoint) if viewer == "auto" else viewer
        chosen.append(_otlp_exporter(otlp_endpoint or None, export_timeout_s, _viewer_headers(found)))
        if not any(isinstance(e, AnnotationExporter) for e in exporters):
            annotations = viewer_exporters(endpoint, found)
    chosen.extend(exporters)
    chosen.extend(annotations)

    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    for exporter in chosen:
        provider.add_span_processor(
            BatchSpanProcessor(
                BoundedSpanExporter(exporter, export_timeout_s), export_timeout_millis=export_timeout_s * 1000
            )
        )
    if set_global:
        trace.set_tracer_provider(provider)
    return provider


def _viewer_headers(viewer: str | None) -> dict[str, str] | None:
    """The OTLP headers a viewer needs beside those of ``OTEL_EXPORTER_OTLP_*HEADERS`` (None: just those)."""
    if viewer != "mlflow":
        return None
    from opentelemetry.util.re import parse_env_headers

    from guardrail.telemetry.mlflow import MLFLOW_EXPERIMENT_HEADER
    from guardrail.telemetry.viewers import mlflow_experiment_id

    text = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS") or os.environ.get("OTEL_EXPORTER_OTLP_HEADERS") or ""
    headers = dict(parse_env_headers(text, liberal=True))
    if MLFLOW_EXPERIMENT_HEADER not in {k.lower() for k in headers}:
        headers[MLFLOW_EXPERIMENT_HEADER] = mlflow_experiment_id()
    return headers


def _otlp_missing(what: str, where: str) -> GuardrailError:
    """The one-line error for an OTLP export asked for without the ``otlp`` extra installed."""
    return GuardrailError(
        f"{what} was requested ({where}) but the OTLP/HTTP exporter is not installed; "
        "install it with: pip install 'fastrm-guard[otlp]'"
    )


def _otlp_exporter(endpoint: str | None, timeout_s: float, headers: dict[str, str] | None = None) -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter,
        )
    except ImportError as exc:
        where = endpoint or f"{_OTLP_ENV[0]}/{_OTLP_ENV[1]}={otlp_endpoint_from_env()}"
        raise _otlp_missing("OTLP export", where) from exc
    kwargs: dict[str, Any] = {"timeout": timeout_s}
    if endpoint:
        kwargs["endpoint"] = _traces_url(endpoint)
    if headers:
        kwargs["headers"] = headers
    return OTLPSpanExporter(**kwargs)


def _traces_url(endpoint: str) -> str:
    """``http://host:4318`` -> ``http://host:4318/v1/traces`` (the exporter takes a full URL)."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def configure_metrics(
    *,
    console: bool | TextIO = False,
    otlp_endpoint: str | None = None,
    otlp_from_env: bool = True,
    readers: Sequence[Any] = (),
    service_name: str | None = None,
    export_interval_s: float = 60.0,
    export_timeout_s: float = 5.0,
    set_global: bool = False,
    viewer: str | None = "auto",
) -> Any:
    """A ``MeterProvider`` for :class:`guardrail.telemetry.guard_metrics.GuardMetrics`, set up like :func:`configure_tracing`.

    - ``console``: True for stdout, or a text stream;
    - ``otlp_endpoint``: an OTLP/HTTP collector (``/v1/metrics`` is appended unless present); when
      None and ``otlp_from_env``, ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``
      enable it (needs the ``otlp`` extra);
    - ``readers``: further metric readers of your own (e.g. the SDK's ``InMemoryMetricReader``);
    - ``export_interval_s``: how often the periodic readers export (also at ``shutdown``/``force_flush``).
    - ``viewer``: what the OTLP endpoint is (as in :func:`configure_tracing`): a trace viewer that takes no
      metrics (Arize Phoenix, MLflow) gets none, instead of a failing export every interval.

    Pass the provider to ``Guard(meter_provider=...)`` and call ``provider.shutdown()`` at exit.
    """
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader

    interval_ms = export_interval_s * 1000
    chosen: list[Any] = []
    if console:
        exporter = ConsoleMetricExporter(out=sys.stdout if console is True else console)
        chosen.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms))
    endpoint = otlp_endpoint or (otlp_endpoint_from_env("metrics") if otlp_from_env else None)
    if endpoint and viewer is not None:
        from guardrail.telemetry.viewers import VIEWERS, detect_viewer

        found = detect_viewer(endpoint) if viewer == "auto" else viewer
        if found in VIEWERS:
            _log.info("%s is %s, which takes traces but no metrics: no OTLP metrics sent there", endpoint, found)
            endpoint = None
    if endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        except ImportError as exc:
            raise _otlp_missing("OTLP metrics export", endpoint) from exc
        kwargs: dict[str, Any] = {"timeout": export_timeout_s}
        if otlp_endpoint:
            kwargs["endpoint"] = _signal_url(otlp_endpoint, "metrics")
        chosen.append(PeriodicExportingMetricReader(
            OTLPMetricExporter(**kwargs), export_interval_millis=interval_ms,
            export_timeout_millis=export_timeout_s * 1000,
        ))
    chosen.extend(readers)
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    provider = MeterProvider(metric_readers=chosen, resource=Resource.create({"service.name": name}))
    if set_global:
        otel_metrics.set_meter_provider(provider)
    return provider


def _signal_url(endpoint: str, signal: str) -> str:
    base = endpoint.rstrip("/")
    return base if base.endswith(f"/v1/{signal}") else f"{base}/v1/{signal}"
