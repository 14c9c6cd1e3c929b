"""Optional MLflow integration: the guard's verdict as MLflow assessments (feedback) on its traces.

MLflow 3's tracking server ingests OTLP spans at ``/v1/traces`` (with the header
``x-mlflow-experiment-id``) and shows them as traces whose id is ``tr-`` + the OpenTelemetry trace id
in hex. Its evaluation columns and the trace view's assessment pane read *assessments*, which OTLP
does not carry; this exporter creates them through the server's REST API
(``POST /api/3.0/mlflow/traces/{trace_id}/assessments``), two per guarded answer, on its span:

- ``fastrm``: feedback value ``confident`` / ``uncertain`` / ``unscored`` / ``unguarded``, rationale =
  the decision's reason, metadata = action, score (higher = more uncertain), rule, policy, threshold;
- ``fastrm.action``: feedback value = the policy's action.

Standard library HTTP only, on the exporter's own thread (:class:`~guardrail.telemetry.annotations.AnnotationExporter`)::

    provider = configure_tracing(otlp_endpoint="http://127.0.0.1:5000")   # MLflow detected: assessments on
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.annotations import AnnotationExporter, VerdictNote

__all__ = ["MLFLOW_EXPERIMENT_HEADER", "MlflowAssessmentExporter", "mlflow_assessments", "mlflow_trace_id"]

_log = logging.getLogger(__name__)

#: the OTLP header that names the experiment MLflow files the spans under
MLFLOW_EXPERIMENT_HEADER = "x-mlflow-experiment-id"


def mlflow_trace_id(trace_id_hex: str) -> str:
    """MLflow's id of a trace ingested over OTLP: ``tr-`` + the 32-hex-digit OpenTelemetry trace id."""
    return f"tr-{trace_id_hex}"


def mlflow_assessments(note: VerdictNote) -> list[dict[str, Any]]:
    """The assessments (``CreateAssessment`` bodies) of one note: the verdict and the action."""
    trace_id = mlflow_trace_id(note.trace_id)
    source = {"source_type": "CODE", "source_id": "fastrm-guard"}
    metadata = {k: str(v) for k, v in {"action": note.action, "score": note.score, **note.metadata}.items()
                if v is not None}
    verdict = {"assessment_name": note.name or semconv.VERDICT_NOTE_NAME, "trace_id": trace_id, "span_id": note.span_id,
               "source": source, "feedback": {"value": note.label}, "metadata": metadata}
    if note.explanation:
        verdict["rationale"] = note.explanation
    out = [verdict]
    if note.action and note.name is None:
        out.append({"assessment_name": semconv.ACTION_NOTE_NAME, "trace_id": trace_id, "span_id": note.span_id,
                    "source": source, "feedback": {"value": note.action}})
    return out


class MlflowAssessmentExporter(AnnotationExporter):
    """Creates MLflow assessments for the verdicts of exported spans (see the module docstring).

    ``endpoint`` is the tracking server's base URL (``http://127.0.0.1:5000``; a trailing ``/v1/traces``
    is ignored). An MLflow trace has its assessments in the trace list already, so a trace's root span
    gets a note only when no guard span of the trace got one (a ``guardrail serve`` request answered
    in another request's batch). A refused post (the trace not ingested yet) is retried on the
    exporter's own thread.
    """

    def __init__(self, endpoint: str, *, timeout_s: float = 5.0, retries: int = 10, retry_delay_s: float = 1.0,
                 headers: dict[str, str] | None = None) -> None:
        self.base = endpoint.rstrip("/").removesuffix("/v1/traces")
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._traces_with_rows: OrderedDict[str, None] = OrderedDict()
        self._created: set[tuple[str, str, str]] = set()  # of the notes being posted: not again on a retry
        super().__init__(retries=retries, retry_delay_s=retry_delay_s)

    def notes_for(self, spans):
        kept = []
        for note in super().notes_for(spans):
            if not note.root:
                self._traces_with_rows[note.trace_id] = None
                while len(self._traces_with_rows) > self.max_pending_traces:
                    self._traces_with_rows.popitem(last=False)
            elif note.trace_id in self._traces_with_rows:
                continue
            kept.append(note)
        return kept

    def post(self, notes: Sequence[VerdictNote]) -> bool:
        for note in notes:
            for assessment in mlflow_assessments(note):
                key = (assessment["trace_id"], assessment["span_id"], assessment["assessment_name"])
                if key in self._created:
                    continue
                url = f"{self.base}/api/3.0/mlflow/traces/{assessment['trace_id']}/assessments"
                body = json.dumps({"assessment": assessment}).encode("utf-8")
                request = urllib.request.Request(url, data=body, headers=self.headers, method="POST")
                try:
                    with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                        if not 200 <= response.status < 300:
                            return False
                except urllib.error.HTTPError as exc:  # the trace is not there yet
                    _log.debug("MLflow refused an assessment: HTTP %s", exc.code)
                    return False
                self._created.add(key)
        self._created.clear()  # one batch of notes at a time (one worker thread)
        return True
