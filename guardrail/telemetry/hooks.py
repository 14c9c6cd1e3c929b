"""What the Guard reports about each call, and the OpenTelemetry implementation of it.

The Guard knows nothing about spans, attributes, events or metrics: it calls the hooks of a
:class:`GuardHooks` at fixed points of every call, the way OpenTelemetry's instrumentors call a
``request_hook`` and a ``response_hook`` around the library call they wrap::

    with hooks.call(start_time=...) as call:        # one model call: a single answer, a batch or a stream
        ... model.generate ...                      #   hooks.call_failed(call) if it raises
        for each row:
            with hooks.row(call) as row:            #   scoring, deciding and escalating one answer
                hooks.row_ids(row)                  #     trace/span ids for an escalation record
                hooks.row_done(row, report)         #     the row's outcome (a RowReport)
        hooks.call_done(call, reports, kwargs)      #   every row's outcome

:class:`GuardHooks` is the no-op base; :class:`OpenTelemetryHooks` (what the Guard always uses) opens a
``chat {model}`` span per call and an ``apply_guardrail fastrm`` span per row, writes GenAI and
OpenInference attributes, token events with encoded maps, the verdict event and the metrics.

Contract: a hook never raises and never stalls the call. ``OpenTelemetryHooks`` starts and ends
spans in a bounded worker (:func:`guardrail.telemetry.safe_span.contained_span`) and swallows every error
of its own annotation code: telemetry never breaks inference.

Your own hooks: subclass :class:`GuardHooks` and pass ``Guard(..., hooks=[MyHooks()])``; they run
after the OpenTelemetry hooks, at the same points, through a :class:`HookChain` that logs and drops
their errors. They run on the calling thread, inside the call: keep them quick (hand slow work to a
queue of your own).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from calibration import token_entropy

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.safe_span import attribute_room, contained_span, event_limit
from guardrail.telemetry.guard_metrics import GuardMetrics
from guardrail.telemetry.mapcodec import encode_map, map_attributes
from guardrail.telemetry.attributes import (
    MapBudget,
    batch_content_attributes,
    chat_attributes,
    chat_content_attributes,
    get_tracer,
    guardrail_attributes,
    guardrail_messages_attributes,
    guardrail_result_event_attributes,
    image_attributes,
    image_data_uri,
    map_budget_attributes,
    messages_attributes,
    token_event_attributes,
    verdict_label,
)
from guardrail.telemetry.map_image import overlay_data_uri

if TYPE_CHECKING:  # pragma: no cover
    from policies import Decision

    from guardrail.result import GuardResult

__all__ = ["GuardHooks", "HookChain", "OpenTelemetryHooks", "RowReport"]


@dataclass(frozen=True)
class RowReport:
    """The outcome of one row (one question) of a guarded call, as the hooks see it.

    ``answer`` is the model's own answer, which ``result`` may withhold (``result.text`` is what the
    user got); ``image`` is the Guard's handle of the row's image (``.pil``, ``.reference()``);
    ``token_times`` the wall-clock times (ns since the epoch) at which the row's tokens came out.
    """

    result: GuardResult
    decision: Decision
    answer: str
    image: Any
    index: int
    n_rows: int
    n_prompt: int  # this row's prompt tokens, without padding
    model_s: float
    guard_s: float
    token_times: Sequence[int] = ()
    #: the answer's signals (:class:`calibration.AnswerSignals`: map entropies, token statistics,
    #: ...), computed once by the answer pipeline; None when the guard failed
    signals: Any = None


class GuardHooks:
    """The points at which the Guard reports a call; every method here does nothing.

    A subclass overrides what it needs. The handles that ``call`` and ``row`` yield are the
    implementation's own (the Guard only passes them back). A method should not raise: the Guard's own
    hooks never do, and the errors of hooks passed as ``Guard(hooks=...)`` are logged and dropped
    (:class:`HookChain`).
    """

    @contextmanager
    def call(self, *, start_time: int | None = None) -> Iterator[Any]:
        """Around one call; ``start_time`` (ns since the epoch) backdates it (a stream reports at its end)."""
        yield None

    def call_failed(self, call: Any) -> None:
        """The model (not the guard) raised; called inside ``call`` while the exception is being handled."""

    def call_done(self, call: Any, reports: Sequence[RowReport], kwargs: dict[str, Any]) -> None:
        """Every row is decided; ``kwargs`` are the ``generate`` arguments the call used."""

    @contextmanager
    def row(self, call: Any) -> Iterator[Any]:
        """Around scoring, deciding and escalating one row."""
        yield None

    def row_ids(self, row: Any) -> dict[str, str]:
        """``{"trace_id", "span_id"}`` to put on the row's escalation record (empty when there are none)."""
        return {}

    def row_done(self, row: Any, report: RowReport) -> None:
        """The row's outcome, before ``row`` exits."""


@dataclass
class _RowHandle:
    span: trace.Span
    report: RowReport | None = field(default=None)


class OpenTelemetryHooks(GuardHooks):
    """Spans, events and metrics of guarded calls (``opentelemetry-api`` only).

    Args:
        model_name: the model's name in span names and attributes.
        tracer_provider, meter_provider: default the global ones.
        capture_content: record question/answer text, token text and the image's data.
        map_budget: bytes of encoded maps one span may carry.
        maps_dir: when set, every row's full maps also go to ``maps_dir/<trace>-<span>.safetensors``.
        timeout_s: the most a span processor may take to start or end a span.
        grid, proxy_id, calibration_id, score_name, aggregation: what the guard ran with (attributes;
            ``grid`` None for model families without one grid).
    """

    def __init__(self, *, model_name: str, tracer_provider: trace.TracerProvider | None = None,
                 meter_provider: Any = None, capture_content: bool = False, map_budget: MapBudget | None = None,
                 maps_dir: str | Path | None = None, timeout_s: float = 1.0, grid: Sequence[int] | None = None,
                 proxy_id: str = "", calibration_id: str = "none", score_name: str = "none",
                 aggregation: str = "none") -> None:
        self.model_name = model_name
        self.tracer = get_tracer(tracer_provider)
        self.metrics = GuardMetrics(meter_provider)
        self.capture_content = bool(capture_content)
        self.map_budget = map_budget or MapBudget()
        self.maps_dir = None if maps_dir is None else Path(maps_dir)
        self.timeout_s = timeout_s
        self.grid = None if grid is None else list(grid)  # None: the family has no one grid
        self.proxy_id = proxy_id
        self.calibration_id = calibration_id
        self.score_name = score_name
        self.aggregation = aggregation

    # ------------------------------------------------------------------ hooks
    @contextmanager
    def call(self, *, start_time: int | None = None) -> Iterator[trace.Span]:
        with self._span(f"{semconv.CHAT_SPAN_PREFIX} {self.model_name}", start_time=start_time) as span:
            yield span
            _ok(span)  # not reached when the call raises (call_failed set ERROR)

    def call_failed(self, call: trace.Span) -> None:
        try:
            exc = sys.exc_info()[1]
            if call.is_recording() and exc is not None:
                call.set_attribute(semconv.ERROR_TYPE, type(exc).__qualname__)
                call.set_status(Status(StatusCode.ERROR, str(exc)))
        except Exception:  # telemetry must never break the guarded call
            _log.debug("telemetry failed", exc_info=True)

    def call_done(self, call: trace.Span, reports: Sequence[RowReport], kwargs: dict[str, Any]) -> None:
        """The ``chat`` span: token counts summed over the rows (each row's prompt without padding); under
        content capture, the messages: the question with its image and the model's answer (even when
        withheld), for a batch one user and one assistant message per row (each row's span has its own too)."""
        try:
            if not call.is_recording():
                return
            results = [r.result for r in reports]
            call.set_attributes(chat_attributes(
                self.model_name,
                input_tokens=sum(r.n_prompt for r in reports),
                output_tokens=sum(len(r.token_ids) for r in results),
                finish_reasons=[r.finish_reason for r in results],
                max_tokens=kwargs.get("max_new_tokens"),
                temperature=kwargs.get("temperature") if kwargs.get("do_sample") else None,
            ))
            if not self.capture_content:
                return
            if len(reports) == 1:
                image = reports[0].image
                uri = image_data_uri(image.pil) if image is not None else None
                call.set_attributes(chat_content_attributes(results[0].question, reports[0].answer,
                                                            finish_reason=results[0].finish_reason, image_uri=uri))
                overlay = self._overlay(reports[0])
                if overlay:  # Phoenix draws images of an LLM span's messages only: the map beside the answer
                    call.set_attributes(messages_attributes(semconv.LLM_OUTPUT_MESSAGES, [
                        ("assistant", [("text", reports[0].answer), ("image", overlay)])]))
            else:
                questions, answers = [r.question for r in results], [r.answer for r in reports]
                reasons, uris = [r.finish_reason for r in results], _batch_image_uris([r.image for r in reports])
                attrs = batch_content_attributes(questions, answers, finish_reasons=reasons, image_uris=uris)
                room, k = attribute_room(call), len(reports)
                # the SDK drops a span's *oldest* attributes beyond its limit (the model, the token counts):
                # keep the per-row messages of as many rows as fit, every row in the JSON lists
                while room is not None and len(attrs) + 1 > room and k > 0:
                    k -= 1
                    attrs = {**batch_content_attributes(questions[:k], answers[:k], finish_reasons=reasons[:k],
                                                        image_uris=uris[:k]),
                             **{key: v for key, v in batch_content_attributes(
                                 questions, answers, finish_reasons=reasons).items()
                                if key in (semconv.INPUT_VALUE, semconv.OUTPUT_VALUE, semconv.GEN_AI_INPUT_MESSAGES,
                                           semconv.GEN_AI_OUTPUT_MESSAGES)}}
                call.set_attributes({**attrs, semconv.FASTRM_BATCH_ROWS_IN_MESSAGES: k})
        except Exception:  # telemetry must never break the guarded call
            _log.debug("telemetry failed", exc_info=True)

    @contextmanager
    def row(self, call: trace.Span) -> Iterator[_RowHandle]:
        handle = _RowHandle(trace.INVALID_SPAN)
        with self._span(semconv.GUARDRAIL_SPAN_NAME) as span:
            handle.span = span
            yield handle
            _ok(span)  # a guard that failed set ERROR in row_done
        if handle.report is not None:  # after the span, as a call's metrics always were
            report = handle.report
            self.metrics.record(report.result, model=self.model_name, input_tokens=report.n_prompt)

    def row_ids(self, row: _RowHandle) -> dict[str, str]:
        """``{"trace_id", "span_id"}`` of a recording span, lowercase hex; empty for a non-recording one."""
        try:
            ctx = row.span.get_span_context()
            if ctx.is_valid:
                return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
        except Exception:  # telemetry must never break the guarded call
            _log.debug("telemetry failed", exc_info=True)
        return {}

    def row_done(self, row: _RowHandle, report: RowReport) -> None:
        row.report = report
        self._annotate_row(row.span, report)

    # ------------------------------------------------------------------ spans and attributes
    def _span(self, name: str, start_time: int | None = None):
        # span processors run in a bounded worker: one that raises or hangs never reaches the caller
        return contained_span(self.tracer, name, kind=SpanKind.INTERNAL, timeout_s=self.timeout_s,
                              start_time=start_time)

    def _write_maps(self, maps: np.ndarray, span) -> Path:
        from safetensors.numpy import save_file

        ctx = span.get_span_context()
        path = self.maps_dir / f"{ctx.trace_id:032x}-{ctx.span_id:016x}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"maps": np.ascontiguousarray(maps, dtype=np.float32)}, str(tmp))
        tmp.replace(path)  # never a half-written file
        return path

    def _annotate_row(self, span, report: RowReport) -> None:
        result, decision, answer = report.result, report.decision, report.answer
        try:
            content = self.capture_content
            if decision.unguarded and not content:
                # the reason quotes the error's message, which may quote the question (a handler's
                # exception): with content capture off only the error's type leaves the process
                decision = dataclasses.replace(decision, reason=decision.reason.split(" (", 1)[0]
                                               + f" ({(result.error or 'error').split(':')[0]})")
            if not span.is_recording():
                return
            span.set_attributes(guardrail_attributes(
                decision, verdict=result.verdict, score=result.score, threshold=result.threshold,
                flagged=result.flagged, n_answer_tokens=sum(result.content),
                max_token_entropy=max((e for e, c in zip(result.entropies, result.content) if c), default=None),
                answer=answer if content else None, returned_text=result.text if content else None,
            ))
            span.set_attributes({
                semconv.FASTRM_SCORE_AGGREGATION: self.aggregation,
                semconv.FASTRM_SCORE_NAME: self.score_name,
                **{f"{semconv.FASTRM_SCORES_PREFIX}{k}": float(v) for k, v in result.scores.items() if v is not None},
                semconv.FASTRM_PROXY_ID: self.proxy_id,
                semconv.FASTRM_CALIBRATION_ID: self.calibration_id,
                semconv.FASTRM_MODEL_DURATION: float(report.model_s),
                semconv.FASTRM_GUARD_DURATION: float(report.guard_s),  # scoring, deciding, escalating
                semconv.FASTRM_INPUT_TOKENS: int(report.n_prompt),
                semconv.FASTRM_OUTPUT_TOKENS: len(result.token_ids),
            })
            span.set_attribute(semconv.FASTRM_MAP_GRID, list(result.grid or self.grid or ()))
            if result.verdict_reason:
                span.set_attribute(semconv.GUARDRAIL_VERDICT_REASON, result.verdict_reason)
            if result.warnings:
                span.set_attribute(semconv.GUARDRAIL_WARNINGS, list(result.warnings))
            if result.image_cropped is not None:
                span.set_attribute(semconv.FASTRM_IMAGE_CROPPED, float(result.image_cropped))
            if report.n_rows > 1:
                span.update_name(semconv.guardrail_span_name(report.index))
                span.set_attributes({semconv.FASTRM_BATCH_INDEX: report.index, semconv.FASTRM_BATCH_SIZE: report.n_rows})
                if content:
                    span.set_attribute(semconv.GUARDRAIL_QUESTION, result.question)
            reference = report.image.reference() if report.image is not None else {}
            if report.image is not None:
                span.set_attributes(image_attributes(reference, capture_content=content))
            if content:
                messages = self._row_messages(report, decision)
                span.set_attributes(messages)
                self._map_view(span, messages)
            if result.error:
                span.set_attribute(semconv.ERROR_TYPE, result.error.split(":")[0])
                span.set_status(Status(StatusCode.ERROR, result.error.split(":")[0]))
            if result.regions:
                span.set_attribute(semconv.FASTRM_MAP_REGIONS, json.dumps([r.model_dump(mode="json") for r in result.regions]))
            if self.maps_dir is not None and result.maps is not None:
                span.set_attribute(semconv.FASTRM_MAPS_FILE, str(self._write_maps(result.maps, span)))
            if result.maps is not None:
                self._token_events(span, result, report.token_times, report.signals)
            if len(result.claims) > 1:  # a single claim is the answer itself: the result event says it all
                self._claim_events(span, result)
            span.add_event(semconv.EVALUATION_RESULT_EVENT, guardrail_result_event_attributes(
                decision, verdict=result.verdict, score=result.score, threshold=result.threshold,
                flagged=result.flagged, error_type=result.error.split(":")[0] if result.error else None,
            ))
        except Exception:  # telemetry must never break the guarded call
            _log.debug("telemetry of a guarded row failed", exc_info=True)

    def _claim_events(self, span, result: GuardResult) -> None:
        """One event per claim (offsets into the answer, verdict, score, redacted) and the counts."""
        for c in result.claims:
            attrs = {semconv.CLAIM_INDEX: c.index, semconv.CLAIM_START: c.start, semconv.CLAIM_END: c.end,
                     semconv.CLAIM_KIND: c.kind, semconv.CLAIM_VERDICT: c.verdict or "unscored",
                     semconv.CLAIM_REDACTED: c.redacted}
            if c.score is not None:
                attrs[semconv.CLAIM_SCORE] = float(c.score)
            if self.capture_content:
                attrs[semconv.CLAIM_TEXT] = c.text
            if c.map is not None:  # the claim's map (one token's size, 8 bits): where the claim looked
                attrs.update(map_attributes(encode_map(np.asarray(c.map))))
            span.add_event(semconv.CLAIM_EVENT, attrs)
        span.set_attributes({
            semconv.CLAIMS_COUNT: len(result.claims),
            semconv.CLAIMS_UNCERTAIN: sum(c.verdict == "uncertain" for c in result.claims),
            semconv.CLAIMS_REDACTED: sum(c.redacted for c in result.claims),
        })

    def _map_view(self, guard_span, messages: dict[str, Any]) -> None:
        """A child ``fastrm map`` span of kind LLM carrying the guard span's messages, so that viewers that
        draw message images only on LLM spans (Arize Phoenix) show the answer's map as a picture under
        its guard span. Only with a picture; ended at once."""
        if not any(str(v).startswith("data:image/") for k, v in messages.items() if k.startswith(semconv.LLM_OUTPUT_MESSAGES)):
            return
        ctx = trace.set_span_in_context(guard_span)
        child = self.tracer.start_span(semconv.MAP_VIEW_SPAN_NAME, context=ctx, kind=SpanKind.INTERNAL,
                                       attributes={semconv.OPENINFERENCE_SPAN_KIND: "LLM", **messages})
        child.set_status(Status(StatusCode.OK))
        child.end()

    def _row_messages(self, report: RowReport, decision) -> dict[str, Any]:
        """The row span's messages (content capture only): question, image and answer in; the verdict
        in words and the answer's map over the image out."""
        result = report.result
        pil = report.image.pil if report.image is not None else None
        return guardrail_messages_attributes(
            result.question, report.answer, verdict_text=verdict_text(result, decision),
            image_uri=image_data_uri(pil, max_side=160, max_bytes=48_000) if pil is not None else None,
            overlay_uri=self._overlay(report),
        )

    @staticmethod
    def _overlay(report: RowReport) -> str | None:
        """The answer's map (mean over its scored tokens) over the row's image, a small PNG data URI; None
        without a map or for several image regions (one picture per region is not drawn yet)."""
        answer_map = report.result.answer_map
        if answer_map is None or np.ndim(answer_map) != 2 or answer_map.shape[0] < 2:
            return None
        image = report.image
        box = image.reference().get("box") if image is not None else None
        return overlay_data_uri(image.pil if image is not None else None, answer_map, box=box)

    def _token_events(self, span, result: GuardResult, token_times: Sequence[int], signals: Any = None) -> None:
        n_tokens = len(result.tokens)
        # The SDK keeps at most event_limit events per span and drops the *oldest*
        # silently: emit no more token events than fit beside the result event,
        # answer (scored) tokens first, and say how many tokens got none.
        limit = event_limit(span)
        room = n_tokens if limit is None else max(0, min(n_tokens, limit - 1 - (len(result.claims) if len(result.claims) > 1 else 0)))
        scored = [i for i, c in enumerate(result.content) if c]
        order = list(dict.fromkeys([*scored, *range(n_tokens)]))
        emitted = sorted(order[:room])
        plan = self.map_budget.plan([result.maps[i] for i in emitted],
                                    priority=[k for k, i in enumerate(emitted) if result.content[i]])
        # (T,) nats: the answer pipeline's, or computed here for a result that comes without signals
        raw = (np.atleast_1d(token_entropy(result.maps, map_ndim=2)) if signals is None or signals.map_entropy is None
               else signals.map_entropy)
        log_n = np.log(result.maps.shape[1] * result.maps.shape[2])
        for k, i in enumerate(emitted):
            span.add_event(semconv.TOKEN_EVENT, token_event_attributes(
                i, float(raw[i]), entropy_normalized=float(raw[i] / log_n), scored=result.content[i],
                encoded_map=plan.encoded.get(k),
                token_id=result.token_ids[i] if self.capture_content else None,
                text=result.tokens[i] if self.capture_content else None,
            ), timestamp=token_times[i] if i < len(token_times) else None)
        span.set_attributes(map_budget_attributes(plan, self.map_budget))
        span.set_attributes({
            semconv.FASTRM_MAPS_DROPPED: n_tokens - len(plan.encoded),  # incl. tokens without an event
            semconv.FASTRM_TOKEN_EVENTS_DROPPED: n_tokens - len(emitted),
        })


_log = logging.getLogger(__name__)

#: characters of image data URIs one batch's chat span may carry (the rows' spans have their own)
BATCH_IMAGES_BUDGET = 512_000


def _ok(span) -> None:
    """Status OK on a span that ended its work without an error (an ERROR status stays)."""
    try:
        status = getattr(span, "status", None)
        if span.is_recording() and (status is None or status.status_code is StatusCode.UNSET):
            span.set_status(Status(StatusCode.OK))
    except Exception:  # telemetry must never break the guarded call
        _log.debug("telemetry failed", exc_info=True)


def _batch_image_uris(images: Sequence[Any]) -> list[str | None]:
    """Small data URIs of a batch's images, while they fit :data:`BATCH_IMAGES_BUDGET` (then None)."""
    out: list[str | None] = []
    left = BATCH_IMAGES_BUDGET
    for image in images:
        uri = image_data_uri(image.pil, max_side=128, max_bytes=min(32_000, left)) if image is not None and left > 0 else None
        left -= len(uri or "")
        out.append(uri)
    return out


def verdict_text(result: GuardResult, decision) -> str:
    """The verdict in words, for the guard span's output message: ``uncertain (score 0.91 > threshold 0.70);
    action flag: <reason>``."""
    label = verdict_label(result.verdict, decision.unguarded)
    if result.score is not None and result.threshold is not None:
        label += f" (score {result.score:.3g} {'>' if result.score > result.threshold else '<='} threshold {result.threshold:.3g})"
    return f"{label}; action {decision.action}: {decision.reason}"


def _hook_failed(hook: GuardHooks, point: str) -> None:
    _log.warning("guard hook %s.%s raised; ignored (hooks never break the call)", type(hook).__qualname__, point,
                 exc_info=True)


@contextmanager
def _contained(hook: GuardHooks, point: str, enter: Any) -> Iterator[Any]:
    """``enter()``'s context manager with its own errors logged and dropped: a hook that raises on entry
    yields None, one that raises on exit is ignored, and the Guard's own exception always propagates
    (a hook cannot swallow it)."""
    try:
        cm = enter()
        handle = cm.__enter__()
    except Exception:
        _hook_failed(hook, point)
        yield None
        return
    try:
        yield handle
    except BaseException as exc:
        try:
            cm.__exit__(type(exc), exc, exc.__traceback__)
        except Exception:
            _hook_failed(hook, point)
        raise
    else:
        try:
            cm.__exit__(None, None, None)
        except Exception:
            _hook_failed(hook, point)


class HookChain(GuardHooks):
    """Several :class:`GuardHooks` called in order at each point; what the Guard uses when it is given
    ``hooks=``. The first hook (the Guard's own ``OpenTelemetryHooks``) is trusted to keep the contract;
    an error of any later one is logged (logger ``guardrail.telemetry.hooks``) and dropped, so a user
    hook cannot break or change the call. ``row_ids`` come from the first hook that gives any."""

    def __init__(self, hooks: Sequence[GuardHooks]) -> None:
        self.hooks = list(hooks)

    def _each(self, point: str, handles: Sequence[Any], *args: Any) -> None:
        for hook, handle in zip(self.hooks, handles):
            try:
                getattr(hook, point)(handle, *args)
            except Exception:
                _hook_failed(hook, point)

    @contextmanager
    def call(self, *, start_time: int | None = None) -> Iterator[tuple]:
        with ExitStack() as stack:
            yield tuple(stack.enter_context(_contained(h, "call", partial(h.call, start_time=start_time)))
                        for h in self.hooks)

    def call_failed(self, call: tuple) -> None:
        self._each("call_failed", call)

    def call_done(self, call: tuple, reports: Sequence[RowReport], kwargs: dict[str, Any]) -> None:
        self._each("call_done", call, reports, kwargs)

    @contextmanager
    def row(self, call: tuple) -> Iterator[tuple]:
        with ExitStack() as stack:
            yield tuple(stack.enter_context(_contained(h, "row", partial(h.row, c))) for h, c in zip(self.hooks, call))

    def row_ids(self, row: tuple) -> dict[str, str]:
        for hook, handle in zip(self.hooks, row):
            try:
                ids = hook.row_ids(handle)
            except Exception:
                _hook_failed(hook, "row_ids")
                continue
            if ids:
                return dict(ids)
        return {}

    def row_done(self, row: tuple, report: RowReport) -> None:
        self._each("row_done", row, report)
