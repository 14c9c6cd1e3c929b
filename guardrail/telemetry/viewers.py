"""Which trace viewer an OTLP endpoint is, and what it needs beside the spans.

Arize Phoenix and MLflow take OTLP traces but neither takes OTLP metrics, and both show verdicts
only as their own annotations (:mod:`~guardrail.telemetry.phoenix`, :mod:`~guardrail.telemetry.mlflow`).
:func:`detect_viewer` asks the endpoint once (one short GET to a route only that viewer serves,
cached per endpoint); :func:`guardrail.telemetry.exporters.configure_tracing` then adds the viewer's
annotation exporter and :func:`~guardrail.telemetry.exporters.configure_metrics` sends no metrics
there, for explicit endpoints and for the standard ``OTEL_EXPORTER_OTLP_*`` variables alike.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import urllib.error
import urllib.request
from typing import Literal

__all__ = ["VIEWERS", "Viewer", "detect_viewer", "viewer_base_url", "viewer_exporters"]

_log = logging.getLogger(__name__)

Viewer = Literal["phoenix", "mlflow"]
VIEWERS: tuple[str, ...] = ("phoenix", "mlflow")


def viewer_base_url(endpoint: str) -> str:
    """``http://host:6006/v1/traces`` -> ``http://host:6006`` (an OTLP endpoint's base URL)."""
    base = endpoint.strip().rstrip("/")
    for suffix in ("/v1/traces", "/v1/metrics"):
        base = base.removesuffix(suffix)
    return base


def _get(url: str, timeout_s: float) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return r.status, r.read(4096)
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@functools.lru_cache(maxsize=32)
def detect_viewer(endpoint: str, timeout_s: float = 1.0) -> Viewer | None:
    """``"phoenix"`` or ``"mlflow"`` when the OTLP ``endpoint`` is served by one, else None.

    Phoenix answers ``GET /arize_phoenix_version`` with its version; MLflow's tracking server answers
    ``GET /api/2.0/mlflow/experiments/search`` with a JSON object of experiments. Anything else (an
    OpenTelemetry Collector, an unreachable host, a timeout) is None. Cached per endpoint.
    """
    base = viewer_base_url(endpoint)
    if not base.startswith(("http://", "https://")):
        return None
    try:
        status, body = _get(f"{base}/arize_phoenix_version", timeout_s)
        if status == 200 and body.strip()[:1].isdigit():
            return "phoenix"
        status, body = _get(f"{base}/api/2.0/mlflow/experiments/search?max_results=1", timeout_s)
        if status == 200 and isinstance(json.loads(body or b"null"), dict):
            return "mlflow"
    except (OSError, ValueError) as exc:
        _log.debug("no viewer detected at %s: %s", base, exc)
    return None


def viewer_exporters(endpoint: str, viewer: Viewer | None) -> list:
    """The annotation exporter of ``viewer`` at ``endpoint`` (empty for None)."""
    if viewer == "phoenix":
        from guardrail.telemetry.phoenix import PhoenixAnnotationExporter

        return [PhoenixAnnotationExporter(viewer_base_url(endpoint))]
    if viewer == "mlflow":
        from guardrail.telemetry.mlflow import MlflowAssessmentExporter

        return [MlflowAssessmentExporter(viewer_base_url(endpoint))]
    return []


def mlflow_experiment_id() -> str:
    """The MLflow experiment spans go to: ``MLFLOW_EXPERIMENT_ID`` or ``"0"`` (MLflow's Default experiment)."""
    return os.environ.get("MLFLOW_EXPERIMENT_ID", "").strip() or "0"
