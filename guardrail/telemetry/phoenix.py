"""Optional Arize Phoenix integration: the guard's verdict as a Phoenix span annotation.

Phoenix shows our spans natively from their OpenInference attributes (sent over OTLP, see
:func:`guardrail.telemetry.exporters.configure_tracing`). Its annotation chips, filters and evaluation
views, however, read *annotations*, which are not part of OTLP. This module posts one
annotation per guarded call to Phoenix's REST API (``POST /v1/span_annotations``):

    name "fastrm", annotator kind CODE, label = verdict (or "unguarded"), score = answer score
    (higher = more uncertain), explanation = the decision's reason, metadata = action, rule,
    policy and threshold; attached to the ``apply_guardrail fastrm`` span.

It is a span exporter, so it runs behind the same bounded, batching machinery as the others
and never blocks or fails the guarded call (standard library HTTP only; no Phoenix package)::

    provider = configure_tracing(otlp_endpoint="http://127.0.0.1:6006",
                                 exporters=[PhoenixAnnotationExporter("http://127.0.0.1:6006")])

The CLI does the same with ``--phoenix URL``.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import guardrail.telemetry.semconv as semconv

__all__ = ["PhoenixAnnotationExporter", "annotation_for"]

_log = logging.getLogger(__name__)


def annotation_for(span_id: str, attributes: dict[str, Any]) -> dict[str, Any] | None:
    """The Phoenix span annotation of one ``apply_guardrail fastrm`` span's attributes (None if not one)."""
    if semconv.GUARDRAIL_ACTION not in attributes:
        return None
    verdict = attributes.get(semconv.GUARDRAIL_VERDICT)
    if verdict is None:
        verdict = "unguarded" if attributes.get(semconv.GUARDRAIL_UNGUARDED) else None
    result = {k: v for k, v in {
        "label": verdict,
        "score": attributes.get(semconv.GUARDRAIL_SCORE),
        "explanation": attributes.get(semconv.GUARDRAIL_REASON),
    }.items() if v is not None}
    metadata = {k.removeprefix("fastrm.guardrail."): attributes[k] for k in (
        semconv.GUARDRAIL_ACTION, semconv.GUARDRAIL_RULE, semconv.GUARDRAIL_POLICY_ID,
        semconv.GUARDRAIL_POLICY_VERSION, semconv.GUARDRAIL_THRESHOLD, semconv.GUARDRAIL_FLAGGED,
    ) if k in attributes}
    return {"span_id": span_id, "name": semconv.GUARDRAIL_NAME, "annotator_kind": "CODE",
            "result": result, "metadata": metadata, "identifier": ""}


class PhoenixAnnotationExporter(SpanExporter):
    """Posts a span annotation to Phoenix for every exported ``apply_guardrail fastrm`` span.

    ``endpoint`` is Phoenix's base URL (``http://127.0.0.1:6006``). Phoenix accepts an
    annotation only once it knows the span; the spans travel on the OTLP exporter's own
    schedule, so a rejected post is retried ``retries`` times, ``retry_delay_s`` apart.
    Failures are logged and reported as ``FAILURE``, never raised.
    """

    def __init__(self, endpoint: str, *, timeout_s: float = 5.0, retries: int = 5, retry_delay_s: float = 1.0,
                 headers: dict[str, str] | None = None) -> None:
        self.url = endpoint.rstrip("/") + "/v1/span_annotations?sync=true"
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        data = []
        for span in spans:
            if span.name != semconv.GUARDRAIL_SPAN_NAME or span.context is None:
                continue
            note = annotation_for(f"{span.context.span_id:016x}", dict(span.attributes or {}))
            if note is not None:
                data.append(note)
        if not data:
            return SpanExportResult.SUCCESS
        body = json.dumps({"data": data}).encode("utf-8")
        for attempt in range(self.retries + 1):
            try:
                request = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    if 200 <= response.status < 300:
                        return SpanExportResult.SUCCESS
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = exc
            else:
                last = RuntimeError(f"HTTP {response.status}")
            if attempt < self.retries and not self._shutdown:
                time.sleep(self.retry_delay_s)
        _log.warning("could not post %d annotation(s) to Phoenix at %s: %s", len(data), self.url, last)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._shutdown = True

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
