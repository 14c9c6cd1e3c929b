"""The guard's verdict as a label a trace viewer shows: the notes, and the exporter that posts them.

OTLP carries spans, not annotations, so a viewer's label chips, filters and evaluation columns
(Arize Phoenix's span annotations, MLflow's assessments) are fed through the viewer's own REST API.
This module is what the viewers share:

- :func:`verdict_note` reads one ``apply_guardrail fastrm`` span's attributes into a :class:`VerdictNote`:
  label ``confident`` / ``uncertain`` / ``unscored`` (no calibration) / ``unguarded`` (the guard
  failed), the action, the score (higher = more uncertain), the explanation (the decision's reason);
- :func:`root_note` sums up the notes of one trace for its root span (what a trace list shows):
  the most severe label and action, the highest score;
- :class:`AnnotationExporter` is a span exporter that turns exported spans into notes (one per guard
  span, one for the trace's root span, which is exported last) and posts them on a worker thread of
  its own, retrying while the viewer does not know the span yet. ``export`` never waits on the
  network, so the span pipeline never reports spans as unexported because a viewer was slow; a note
  that could not be posted after every retry is logged as lost.

:class:`~guardrail.telemetry.phoenix.PhoenixAnnotationExporter` and
:class:`~guardrail.telemetry.mlflow.MlflowAssessmentExporter` implement :meth:`AnnotationExporter.post`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.attributes import verdict_label

__all__ = ["AnnotationExporter", "VerdictNote", "claim_notes", "root_note", "verdict_label", "verdict_note"]

_log = logging.getLogger(__name__)

# most severe first: what a trace's summary shows when its rows disagree
_LABEL_ORDER = ("unguarded", "uncertain", "unscored", "confident")
_ACTION_ORDER = ("escalate", "abstain", "redact", "flag", "allow")
_METADATA_KEYS = (semconv.GUARDRAIL_RULE, semconv.GUARDRAIL_POLICY_ID, semconv.GUARDRAIL_POLICY_VERSION,
                  semconv.GUARDRAIL_THRESHOLD, semconv.GUARDRAIL_FLAGGED)


@dataclass(frozen=True)
class VerdictNote:
    """One verdict, ready for a viewer: ``label`` and ``action`` are short words, ``score`` the answer
    score (higher = more uncertain; None when unscored), ``explanation`` the decision's reason.
    ``span_id``/``trace_id`` are lowercase hex; ``root`` says the note sums up a trace on its root span."""

    label: str
    action: str | None = None
    score: float | None = None
    explanation: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    span_id: str = ""
    trace_id: str = ""
    root: bool = False
    #: the annotation's name when it is not the verdict's (one claim: ``fastrm.claim.<index>``)
    name: str | None = None


def claim_notes(events: Sequence[Any]) -> list[VerdictNote]:
    """One note per claim event of a guard span (a several-claim answer): label the claim's verdict,
    its score, and the claim (its text when recorded, its offsets) as the explanation."""
    out = []
    for ev in events:
        if getattr(ev, "name", None) != semconv.CLAIM_EVENT:
            continue
        a = dict(ev.attributes or {})
        i = a.get(semconv.CLAIM_INDEX)
        text = a.get(semconv.CLAIM_TEXT)
        where = f"characters {a.get(semconv.CLAIM_START)}-{a.get(semconv.CLAIM_END)} of the answer"
        out.append(VerdictNote(
            label=str(a.get(semconv.CLAIM_VERDICT, "unscored")),
            action="redact" if a.get(semconv.CLAIM_REDACTED) else None, score=a.get(semconv.CLAIM_SCORE),
            explanation=(f"claim {i} {text!r} ({where})" if text is not None else f"claim {i} ({where})")
            + ("; removed by redact" if a.get(semconv.CLAIM_REDACTED) else ""),
            metadata={"claim": i, "kind": a.get(semconv.CLAIM_KIND)}, name=f"{semconv.CLAIM_NOTE_PREFIX}{i}"))
    return out


def verdict_note(attributes: dict[str, Any]) -> VerdictNote | None:
    """The note of one guard span's attributes; None for a span without a decision.

    >>> verdict_note({"fastrm.guardrail.action": "flag", "fastrm.guardrail.verdict": "uncertain",
    ...               "fastrm.guardrail.score": 0.9}).label
    'uncertain'
    """
    action = attributes.get(semconv.GUARDRAIL_ACTION)
    if action is None:
        return None
    return VerdictNote(
        label=verdict_label(attributes.get(semconv.GUARDRAIL_VERDICT), bool(attributes.get(semconv.GUARDRAIL_UNGUARDED))),
        action=str(action),
        score=attributes.get(semconv.GUARDRAIL_SCORE),
        explanation=attributes.get(semconv.GUARDRAIL_REASON),
        metadata={k.removeprefix("fastrm.guardrail."): attributes[k] for k in _METADATA_KEYS if k in attributes},
    )


def _rank(value: str | None, order: Sequence[str]) -> int:
    return order.index(value) if value in order else len(order)


def root_note(notes: Sequence[VerdictNote]) -> VerdictNote | None:
    """One note for a trace of several verdicts (a batch): the most severe label and action, the highest
    score, and an explanation that counts the rows (``"2 of 3 rows uncertain; ..."``)."""
    if not notes:
        return None
    if len(notes) == 1:
        return replace(notes[0], root=True)
    label = min((n.label for n in notes), key=lambda v: _rank(v, _LABEL_ORDER))
    action = min((n.action for n in notes), key=lambda v: _rank(v, _ACTION_ORDER))
    scores = [n.score for n in notes if n.score is not None]
    counts = [f"{sum(n.label == v for n in notes)} {v}" for v in _LABEL_ORDER if any(n.label == v for n in notes)]
    return VerdictNote(label=label, action=action, score=max(scores) if scores else None,
                       explanation=f"{len(notes)} rows: " + ", ".join(counts), root=True,
                       metadata={"rows": len(notes)})


class AnnotationExporter(SpanExporter):
    """Notes for exported spans, posted to a viewer on a worker thread (subclasses implement :meth:`post`).

    Every ``apply_guardrail fastrm`` span gets its note; the trace's local root span (no parent, or a
    remote parent, such as ``guardrail serve``'s request span under a client's trace) gets
    :func:`root_note` of its trace's notes, or, when it carries ``fastrm.serve.verdict`` itself, that.
    ``retries`` posts ``retry_delay_s`` apart while the viewer refuses (it accepts a note only once
    it has the span, which travels on another exporter's schedule); then the notes are logged as lost.
    """

    #: traces whose guard notes wait for their root span; the oldest are forgotten beyond this
    max_pending_traces = 4096

    def __init__(self, *, retries: int = 10, retry_delay_s: float = 1.0, max_queue: int = 10_000) -> None:
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self._pending: OrderedDict[int, list[VerdictNote]] = OrderedDict()
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._busy = 0
        self._shutdown = threading.Event()
        self.lost = 0  # notes given up on (after every retry, or a full queue)
        self._worker = threading.Thread(target=self._run, name=f"fastrm-{type(self).__name__}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ what subclasses implement
    def post(self, notes: Sequence[VerdictNote]) -> bool:  # pragma: no cover - abstract
        """Send ``notes`` to the viewer; True when it accepted them (False: retry later). May raise OSError."""
        raise NotImplementedError

    # ------------------------------------------------------------------ SpanExporter
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown.is_set():
            return SpanExportResult.FAILURE
        notes = self.notes_for(spans)
        if notes:
            with self._lock:
                try:
                    self._queue.put_nowait(notes)
                    self._busy += 1
                except queue.Full:
                    self.lost += len(notes)
                    _log.warning("%s: queue full; %d verdict note(s) lost", type(self).__name__, len(notes))
        return SpanExportResult.SUCCESS  # the spans themselves are someone else's; nothing here waits

    def notes_for(self, spans: Sequence[ReadableSpan]) -> list[VerdictNote]:
        """The notes of a batch of exported spans (guard spans at once, root spans with their trace's notes)."""
        out: list[VerdictNote] = []
        for span in spans:
            ctx = span.context
            if ctx is None:
                continue
            attrs = dict(span.attributes or {})
            ids = {"span_id": f"{ctx.span_id:016x}", "trace_id": f"{ctx.trace_id:032x}"}
            if semconv.is_guardrail_span(span.name):
                note = verdict_note(attrs)
                if note is not None:
                    note = replace(note, **ids)
                    out.append(note)
                    out += [replace(c, **ids) for c in claim_notes(span.events or ())]
                    with self._lock:
                        self._pending.setdefault(ctx.trace_id, []).append(note)
                        while len(self._pending) > self.max_pending_traces:
                            self._pending.popitem(last=False)
                continue
            if span.parent is not None and not span.parent.is_remote:
                continue  # not the trace's local root
            with self._lock:
                rows = self._pending.pop(ctx.trace_id, [])
            own = attrs.get(semconv.SERVE_VERDICT)
            if own is not None:  # guardrail serve's request span: its own request's verdict
                note = VerdictNote(label=str(own), action=attrs.get(semconv.SERVE_ACTION), score=attrs.get(semconv.SERVE_SCORE),
                                   explanation=attrs.get(semconv.SERVE_REASON), root=True)
            else:
                note = root_note(rows)
            if note is not None:
                out.append(replace(note, root=True, **ids))
        return out

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        with self._idle:
            while self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def shutdown(self) -> None:
        self.force_flush(int(max(self.retries * self.retry_delay_s, 1.0) * 1000))
        self._shutdown.set()
        self._queue.put(None)

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while True:
            notes = self._queue.get()
            if notes is None:
                return
            try:
                self._deliver(notes)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _deliver(self, notes: list[VerdictNote]) -> None:
        last: Any = None
        for attempt in range(self.retries + 1):
            try:
                if self.post(notes):
                    return
                last = "refused"
            except Exception as exc:  # a viewer's failure is logged, never raised into the app
                last = exc
            if attempt < self.retries and not self._shutdown.wait(self.retry_delay_s):
                continue
            break
        self.lost += len(notes)
        _log.warning("%s: %d verdict note(s) lost after %d tries: %s", type(self).__name__, len(notes),
                     attempt + 1, last)
