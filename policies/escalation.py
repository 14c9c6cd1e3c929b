"""Running an escalation: call the policy's handler or append to its JSONL queue.

This is the only module of ``policies`` that does I/O. Both targets receive the
same *escalation record*, a JSON-serialisable dict::

    {"time": "2025-01-01T12:00:00.000000+00:00",   # UTC, ISO 8601
     "policy_id": "strict", "policy_version": "1",
     "rule": "uncertain-medical", "reason": "...",
     "trace_id": "5b8e...", "span_id": "eee1...",  # the guarded call's trace, when the caller has one
     "payload": {...}}                              # what the caller passed

A queue file gets one line per record, written with a single ``O_APPEND``
write under a per-file lock, so concurrent escalations from threads never
interleave and an existing file is never rewritten. The queue must be a regular
file: a symbolic link, a FIFO, a device or ``/proc/self/fd/N`` is refused
(opened with ``O_NOFOLLOW | O_NONBLOCK``, then checked), a new file is created
``0600`` (records hold questions and answers), a failed write (disk full) is
truncated away so no partial line stays, and a record appended after a line
left unfinished by a crash starts on a new line.

A handler runs in a worker thread: whatever it raises, ``SystemExit`` and
``KeyboardInterrupt`` included, becomes a ``PolicyError``, and with
``timeout_s`` a handler still running after that long is abandoned (left to
finish in its daemon thread) and reported as a failure.

Any failure (handler not importable, handler raised or timed out, file not
writable, payload not serialisable) is raised as
:class:`~fastrm_common.errors.PolicyError`; the Guard decides what to do with it
according to ``on_error``.

Example::

    >>> from policies import Decision, escalate                    # doctest: +SKIP
    >>> escalate(decision, {"question": "how many?", "answer": "3"})  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import errno
import importlib
import json
import os
import stat
import threading
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastrm_common.errors import PolicyError

from .engine import Decision

__all__ = ["escalate", "escalation_record", "resolve_handler"]

_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def resolve_handler(spec: str) -> Callable[[dict[str, Any]], Any]:
    """Import ``"package.module:attr[.attr]"`` and return the callable it names.

    Raises :class:`PolicyError` naming the spec when the module cannot be
    imported, the attribute does not exist or is not callable.
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise PolicyError(f"invalid escalation handler {spec!r}; expected 'package.module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an import can fail with anything the module raises
        raise PolicyError(f"cannot import escalation handler {spec!r}: {type(exc).__name__}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise PolicyError(
                f"cannot import escalation handler {spec!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not callable(obj):
        raise PolicyError(f"escalation handler {spec!r} is not callable (it is a {type(obj).__name__})")
    return obj


def escalation_record(
    decision: Decision,
    payload: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
) -> dict[str, Any]:
    """The dict that :func:`escalate` sends: time, policy, rule, reason, the trace and span ids of the
    guarded call (lowercase hex, as in OTLP/JSON and trace viewers; left out when not given) and the
    caller's payload."""
    when = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="microseconds"),
        "policy_id": decision.policy_id,
        "policy_version": decision.policy_version,
        "rule": decision.rule,
        "reason": decision.reason,
    }
    if trace_id:
        record["trace_id"] = trace_id
    if span_id:
        record["span_id"] = span_id
    record["payload"] = dict(payload or {})
    return record


def escalate(
    decision: Decision,
    payload: Mapping[str, Any] | None = None,
    *,
    now: datetime | None = None,
    timeout_s: float | None = None,
    trace_id: str | None = None,
    span_id: str | None = None,
) -> dict[str, Any]:
    """Send one escalation for ``decision`` to its handler or queue; return the record sent.

    ``payload`` is any JSON-serialisable mapping (numpy arrays and scalars,
    paths, sets and dataclasses/pydantic models are converted). The handler is
    called as ``handler(record)`` in a worker thread; its return value is
    ignored, anything it raises (``BaseException`` included) is a failure, and
    so is still running after ``timeout_s`` seconds (``None``: wait).

    Raises :class:`PolicyError` if ``decision`` is not an escalation or the
    escalation fails for any reason (the cause is chained).
    """
    if decision.action != "escalate" or decision.escalation is None:
        raise PolicyError(f"decision of rule {decision.rule!r} is {decision.action!r}, not an escalation")
    record = escalation_record(decision, payload, now=now, trace_id=trace_id, span_id=span_id)
    esc = decision.escalation
    if esc.handler is not None:
        handler = resolve_handler(esc.handler)
        _run_handler(esc.handler, handler, record, timeout_s)
        return record
    if esc.queue is None:  # the schema guarantees one of handler/queue; guard hand-built objects
        raise PolicyError(f"escalation of rule {decision.rule!r} has neither a handler nor a queue")
    _append_line(Path(esc.queue), _dumps(record))
    return record


def _run_handler(spec: str, handler: Callable[[dict[str, Any]], Any], record: dict[str, Any],
                 timeout_s: float | None) -> None:
    """Call ``handler(record)`` in a daemon thread; raise PolicyError on any exception or timeout."""
    box: dict[str, BaseException] = {}

    def call() -> None:
        try:
            handler(record)
        except BaseException as exc:  # SystemExit / KeyboardInterrupt from a handler must not end the app
            box["error"] = exc

    worker = threading.Thread(target=call, name=f"fastrm-escalation {spec}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise PolicyError(f"escalation handler {spec!r} did not finish within {timeout_s:g} s")
    exc = box.get("error")
    if exc is not None:
        # type and message only: a handler's message may quote the payload, and this text
        # reaches results and logs (telemetry records only the error type)
        raise PolicyError(f"escalation handler {spec!r} failed: {type(exc).__name__}: {exc}") from (
            exc if isinstance(exc, Exception) else None
        )


def _dumps(record: Mapping[str, Any]) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=_jsonable)
    except (TypeError, ValueError) as exc:
        raise PolicyError(f"escalation payload is not JSON-serialisable: {exc}") from exc


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist"):  # numpy arrays and scalars, torch tensors
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=str)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serialisable")


def _lock_for(path: Path) -> threading.Lock:
    key = str(path.resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


_OPEN_FLAGS = (
    os.O_RDWR | os.O_APPEND | os.O_CREAT  # read: to see whether the file ends mid-line
    | getattr(os, "O_NOFOLLOW", 0)  # a symlink as the last component is refused (ELOOP)
    | getattr(os, "O_NONBLOCK", 0)  # a FIFO without a reader fails (ENXIO) instead of blocking
    | getattr(os, "O_CLOEXEC", 0)
)


def _append_line(path: Path, line: str) -> None:
    data = (line + "\n").encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _lock_for(path):
            try:
                fd = os.open(path, _OPEN_FLAGS, 0o600)
            except OSError as exc:
                if exc.errno == errno.ELOOP or path.is_symlink():
                    raise PolicyError(f"escalation queue {path} is a symbolic link; give the real file's path") from None
                if exc.errno == errno.ENXIO:
                    raise PolicyError(f"escalation queue {path} is a FIFO or socket, not a regular file") from None
                raise
            try:
                info = os.fstat(fd)
                if not stat.S_ISREG(info.st_mode):
                    raise PolicyError(f"escalation queue {path} is not a regular file")
                start = info.st_size
                if start and os.pread(fd, 1, start - 1) != b"\n":
                    data = b"\n" + data  # a line left unfinished (crash): never glue a record to it
                try:
                    view = memoryview(data)
                    while view:  # os.write may write less than asked for very large records
                        n = os.write(fd, view)
                        view = view[n:]
                except OSError:
                    try:  # disk full mid-record: remove the partial line so the file stays parseable
                        os.ftruncate(fd, start)
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)
    except OSError as exc:
        raise PolicyError(f"cannot append to escalation queue {path}: {exc.strerror or exc}") from None
