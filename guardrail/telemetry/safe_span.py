"""Span start and end that a misbehaving span processor can neither break nor stall.

OpenTelemetry's SDK calls every span processor's ``on_start`` / ``on_end`` synchronously in
the thread that starts or ends the span; a processor that raises would reach the guarded
call, and one whose exporter hangs would stall it. Here both calls run in a short-lived
daemon thread that the caller waits on for at most ``timeout_s``: an exception becomes a
non-recording span (start) or is dropped (end), and a processor still busy after the timeout
is left to finish on its own. The span's context is passed explicitly, so parentage is the
same as with ``start_as_current_span``. A tracer that resolves to OpenTelemetry's no-op tracer
(no SDK provider installed: there is no processor to misbehave) is called directly, so an
application without telemetry pays no thread per span.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

__all__ = ["DEFAULT_EVENT_LIMIT", "attribute_room", "contained_span", "event_limit"]

DEFAULT_EVENT_LIMIT = 128  # the SDK's default SpanLimits.max_events (OTEL_SPAN_EVENT_COUNT_LIMIT)

T = TypeVar("T")


def _run_into(fn: Callable[[], Any], box: dict) -> None:
    try:
        box["value"] = fn()
    except BaseException:  # a processor's failure is telemetry's problem, not the caller's
        pass


class _Runner:
    """One long-lived daemon thread that runs span starts and ends one at a time (a thread per
    call costs a thread start each time, and more when the model's own threads keep the cores busy)."""

    def __init__(self) -> None:
        self.tasks: "queue.SimpleQueue[tuple[Callable[[], Any], dict, threading.Event]]" = queue.SimpleQueue()
        self.busy = False  # a task queued or running (set under _RUNNER_LOCK by the caller)
        self.abandoned = False  # a task outlived its timeout: the thread ends after it, callers move on
        threading.Thread(target=self._loop, name="fastrm-telemetry", daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, box, done = self.tasks.get()
            _run_into(fn, box)
            with _RUNNER_LOCK:
                self.busy = False
            done.set()
            if self.abandoned:
                return


_RUNNER: _Runner | None = None
_RUNNER_LOCK = threading.Lock()


def _bounded(fn: Callable[[], T], timeout_s: float, default: T) -> T:
    """``fn()`` in another thread, waited on for at most ``timeout_s``; ``default`` if it raised or
    is still running. The shared runner thread takes it when idle; a call that finds it busy
    (another thread's span, or a processor stuck past its timeout) gets a thread of its own."""
    global _RUNNER
    box: dict[str, Any] = {}
    done = threading.Event()
    with _RUNNER_LOCK:
        if _RUNNER is None or _RUNNER.abandoned:
            _RUNNER = _Runner()
        runner = _RUNNER if not _RUNNER.busy else None
        if runner is not None:
            runner.busy = True
    if runner is not None:
        runner.tasks.put((fn, box, done))
        if not done.wait(timeout_s):
            runner.abandoned = True  # stuck: the next call starts a fresh runner
        return box.get("value", default)

    worker = threading.Thread(target=_run_into, args=(fn, box), name="fastrm-telemetry", daemon=True)
    worker.start()
    worker.join(timeout_s)
    return box.get("value", default)


def _inert(tracer: Any) -> bool:
    """True when ``tracer`` is (or, through the API's proxy, currently resolves to) the no-op tracer."""
    if isinstance(tracer, trace.ProxyTracer):
        try:
            tracer = tracer._tracer  # the API's own resolution: the real tracer once a provider is set
        except Exception:
            return False
    return isinstance(tracer, trace.NoOpTracer)


@contextmanager
def contained_span(tracer: trace.Tracer, name: str, *, timeout_s: float,
                   kind: SpanKind = SpanKind.INTERNAL, start_time: int | None = None) -> Iterator[trace.Span]:
    """Like ``tracer.start_as_current_span(name)``, but processors cannot raise into or stall the caller.

    The span is current inside the block; exceptions of the block pass through untouched
    (recording them on the span is the caller's job). ``start_time`` (ns since the epoch) backdates
    the span, for one opened after the work it describes.
    """
    parent = otel_context.get_current()
    if _inert(tracer):  # nothing runs on start or end: no thread needed
        with trace.use_span(tracer.start_span(name, context=parent, kind=kind, start_time=start_time),
                            end_on_exit=True, record_exception=False, set_status_on_exception=False) as span:
            yield span
        return
    try:
        span = _bounded(lambda: tracer.start_span(name, context=parent, kind=kind, start_time=start_time), timeout_s, trace.INVALID_SPAN)
    except Exception:  # e.g. a tracer whose start_span is not callable
        span = trace.INVALID_SPAN
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield span
    finally:
        if span is not trace.INVALID_SPAN:
            _bounded(span.end, timeout_s, None)


def attribute_room(span: trace.Span) -> int | None:
    """How many more attributes ``span`` keeps before the SDK drops its oldest ones; ``None`` = no limit known."""
    limits = getattr(span, "_limits", None)
    if limits is None:
        return None
    cap = getattr(limits, "max_span_attributes", None) or getattr(limits, "max_attributes", None)
    if not isinstance(cap, int) or cap < 0:
        return None
    return max(0, cap - len(getattr(span, "attributes", None) or {}))


def event_limit(span: trace.Span) -> int | None:
    """How many events ``span`` keeps (the SDK drops the oldest beyond it); ``None`` = no limit known to apply."""
    limits = getattr(span, "_limits", None)
    if limits is not None:
        value = getattr(limits, "max_events", DEFAULT_EVENT_LIMIT)
        return value if isinstance(value, int) and value >= 0 else None
    return DEFAULT_EVENT_LIMIT if span.is_recording() else None
