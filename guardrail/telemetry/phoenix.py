"""Optional Arize Phoenix integration: the guard's verdict as Phoenix span annotations.

Phoenix shows our spans natively from their OpenInference attributes (sent over OTLP, see
:func:`guardrail.telemetry.exporters.configure_tracing`). Its annotation chips, filters and the trace
list's annotation column, however, read *annotations*, which are not part of OTLP. This exporter
posts them to Phoenix's REST API (``POST /v1/span_annotations``), two per verdict:

- ``fastrm``: label ``confident`` / ``uncertain`` / ``unscored`` / ``unguarded``, explanation = the
  decision's reason, metadata = action, score, rule, policy, threshold;
- ``fastrm.action``: label = the policy's action (``allow``, ``flag``, ``abstain``, ``escalate``);
- ``fastrm.score``: score = the answer score (higher = more uncertain), apart from the label because
  Phoenix's chip shows an annotation's score instead of its label when it has both;

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
    """The Phoenix span annotations of one note: the verdict (``fastrm``: label and explanation), the action
    (``fastrm.action``) and the score (``fastrm.score``). Phoenix's chips and summaries show an annotation's
    score whenever it has one, so the verdict's label is kept apart from the score (a mean of raw scores
    across confident and uncertain answers says little); the verdict's metadata has the score too."""
    def annotation(name: str, result: dict[str, Any], metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        return {"span_id": note.span_id, "name": name, "annotator_kind": "CODE", "identifier": "",
                "result": {k: v for k, v in result.items() if v is not None}, "metadata": metadata or {}}

    if note.name is not None:  # one claim: its verdict with the score in the metadata
        return [annotation(note.name, {"label": note.label, "explanation": note.explanation},
                           {"action": note.action, "score": note.score, **note.metadata})]
    out = [annotation(semconv.VERDICT_NOTE_NAME, {"label": note.label, "explanation": note.explanation},
                      {"action": note.action, "score": note.score, **note.metadata})]
    if note.action:
        out.append(annotation(semconv.ACTION_NOTE_NAME, {"label": note.action}))
    if note.score is not None:
        out.append(annotation(semconv.SCORE_NOTE_NAME, {"score": note.score}))
    return out


def annotation_for(span_id: str, attributes: dict[str, Any]) -> dict[str, Any] | None:
    """The ``fastrm`` Phoenix span annotation (the verdict) of one ``apply_guardrail fastrm`` span's attributes
    (None if not one)."""
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
