"""Optional Arize Phoenix integration: the guard's verdict as Phoenix span annotations.

Phoenix shows our spans natively from their OpenInference attributes (sent over OTLP, see
:func:`guardrail.telemetry.exporters.configure_tracing`). Its annotation chips, filters and the trace
list's annotation column, however, read *annotations*, which are not part of OTLP. This exporter
posts them to Phoenix's REST API (``POST /v1/span_annotations``), two per verdict:

- ``fastrm``: label ``confident`` / ``uncertain`` / ``unscored`` / ``unguarded``, score = the answer
  score (higher = more uncertain), explanation = the decision's reason, metadata = rule, policy, threshold;
- ``fastrm.action``: label = the policy's action (``allow``, ``flag``, ``abstain``, ``escalate``);

on every ``apply_guardrail fastrm`` span and on the trace's root span (a batch's root gets the most
severe label and action of its rows), so the trace list shows the verdict without opening the trace.
Posting happens on the exporter's own thread (:class:`~guardrail.telemetry.annotations.AnnotationExporter`):
it never blocks or fails the guarded call, nor the span pipeline (standard library HTTP only)::

    provider = configure_tracing(otlp_endpoint="http://127.0.0.1:6006")   # Phoenix detected: annotations on

or explicitly ``exporters=[PhoenixAnnotationExporter("http://127.0.0.1:6006")]``; the CLI's ``--phoenix URL``.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.annotations import AnnotationExporter, VerdictNote, verdict_note

__all__ = ["PhoenixAnnotationExporter", "annotation_for", "phoenix_annotations"]

_log = logging.getLogger(__name__)


def phoenix_annotations(note: VerdictNote) -> list[dict[str, Any]]:
    """The Phoenix span annotations of one note: the verdict (``fastrm``) and the action (``fastrm.action``)."""
    result = {k: v for k, v in {"label": note.label, "score": note.score, "explanation": note.explanation}.items()
              if v is not None}
    out = [{"span_id": note.span_id, "name": semconv.VERDICT_NOTE_NAME, "annotator_kind": "CODE",
            "result": result, "metadata": {"action": note.action, **note.metadata}, "identifier": ""}]
    if note.action:
        out.append({"span_id": note.span_id, "name": semconv.ACTION_NOTE_NAME, "annotator_kind": "CODE",
                    "result": {"label": note.action}, "metadata": {}, "identifier": ""})
    return out


def annotation_for(span_id: str, attributes: dict[str, Any]) -> dict[str, Any] | None:
    """The ``fastrm`` Phoenix span annotation of one ``apply_guardrail fastrm`` span's attributes (None if not one)."""
    note = verdict_note(attributes)
    if note is None:
        return None
    return phoenix_annotations(VerdictNote(**{**note.__dict__, "span_id": span_id}))[0]


class PhoenixAnnotationExporter(AnnotationExporter):
    """Posts the verdicts of exported spans to Phoenix as span annotations (see the module docstring).

    ``endpoint`` is Phoenix's base URL (``http://127.0.0.1:6006``; a trailing ``/v1/traces`` is
    ignored). Phoenix accepts an annotation only once it knows the span, so a refused post is retried
    ``retries`` times, ``retry_delay_s`` apart, on the exporter's own thread; what is still refused
    then is logged as lost (``self.lost``).
    """

    def __init__(self, endpoint: str, *, timeout_s: float = 5.0, retries: int = 10, retry_delay_s: float = 1.0,
                 headers: dict[str, str] | None = None) -> None:
        base = endpoint.rstrip("/").removesuffix("/v1/traces")
        self.url = base + "/v1/span_annotations?sync=true"
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        super().__init__(retries=retries, retry_delay_s=retry_delay_s)

    def post(self, notes: Sequence[VerdictNote]) -> bool:
        data = [a for note in notes for a in phoenix_annotations(note)]
        request = urllib.request.Request(self.url, data=json.dumps({"data": data}).encode("utf-8"),
                                         headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return 200 <= response.status < 300
        except urllib.error.HTTPError as exc:  # 404 while Phoenix does not know the span yet
            _log.debug("Phoenix refused %d annotation(s): HTTP %s", len(data), exc.code)
            return False
