"""OTLP-JSON-shaped span records: encode a finished span, read a ``.jsonl`` trace file back.

One line of a trace file is one span, shaped like a span of the OTLP/JSON
protocol encoding with its resource and scope inlined::

    {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
     "parentSpanId": "eee19b7ec3c1b173", "name": "apply_guardrail fastrm", "kind": 1,
     "startTimeUnixNano": "1544712660000000000", "endTimeUnixNano": "1544712661000000000",
     "attributes": [{"key": "fastrm.guardrail.verdict", "value": {"stringValue": "confident"}}],
     "droppedAttributesCount": 0,
     "events": [{"timeUnixNano": "...", "name": "fastrm.token", "attributes": [...], "droppedAttributesCount": 0}],
     "droppedEventsCount": 0, "links": [], "droppedLinksCount": 0,
     "status": {"code": 0, "message": ""},
     "resource": {"attributes": [...]}, "scope": {"name": "fastrm-guard", "version": "0.1.0"}}

As in OTLP/JSON: ids are lowercase hex, 64-bit integers are strings, ``kind``
and ``status.code`` are the protobuf enum numbers (kind 1 = INTERNAL ... 5 =
CONSUMER; code 0 UNSET, 1 OK, 2 ERROR), non-finite doubles are ``"NaN"``,
``"Infinity"``, ``"-Infinity"``. ``parentSpanId`` is ``""`` for a root span.

This module needs no SDK: ``span_to_dict`` reads any object with the
``ReadableSpan`` attributes.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastrm_common.errors import DataError
from fastrm_common.records import open_regular

_log = logging.getLogger(__name__)

__all__ = ["decode_attributes", "decode_value", "encode_attributes", "encode_value", "read_trace_jsonl", "span_to_dict"]

_NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def encode_value(value: Any) -> dict[str, Any]:
    """A Python attribute value as an OTLP ``AnyValue`` JSON object."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return {"doubleValue": value}
        return {"doubleValue": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, (bytes, bytearray)):
        return {"bytesValue": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {"kvlistValue": {"values": encode_attributes(value)}}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [encode_value(v) for v in value]}}
    return {"stringValue": str(value)}


def decode_value(value: Mapping[str, Any]) -> Any:
    """Inverse of :func:`encode_value`; arrays come back as tuples (as the SDK stores them)."""
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        v = value["doubleValue"]
        return _NONFINITE[v] if isinstance(v, str) and v in _NONFINITE else float(v)
    if "arrayValue" in value:
        return tuple(decode_value(v) for v in value["arrayValue"].get("values", []))
    if "kvlistValue" in value:
        return decode_attributes(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    return None


def encode_attributes(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``{key: value}`` -> OTLP ``[{"key": k, "value": AnyValue}, ...]`` (insertion order kept)."""
    return [{"key": str(k), "value": encode_value(v)} for k, v in (attributes or {}).items()]


def decode_attributes(attributes: list[Mapping[str, Any]] | None) -> dict[str, Any]:
    """OTLP key/value list -> ``{key: value}``."""
    return {a["key"]: decode_value(a.get("value", {})) for a in (attributes or [])}


def span_to_dict(span: Any) -> dict[str, Any]:
    """A finished SDK ``ReadableSpan`` as one OTLP-JSON-shaped dict (see the module docstring)."""
    ctx = span.context
    parent = span.parent
    scope = getattr(span, "instrumentation_scope", None)
    resource = getattr(span, "resource", None)
    return {
        "traceId": format(ctx.trace_id, "032x"),
        "spanId": format(ctx.span_id, "016x"),
        "parentSpanId": format(parent.span_id, "016x") if parent is not None else "",
        "name": span.name,
        "kind": int(span.kind.value) + 1,  # Python SpanKind starts at INTERNAL = 0; OTLP at UNSPECIFIED = 0
        "startTimeUnixNano": str(span.start_time or 0),
        "endTimeUnixNano": str(span.end_time or 0),
        "attributes": encode_attributes(span.attributes),
        "droppedAttributesCount": int(getattr(span, "dropped_attributes", 0)),
        "events": [
            {
                "timeUnixNano": str(e.timestamp),
                "name": e.name,
                "attributes": encode_attributes(e.attributes),
                "droppedAttributesCount": int(getattr(e, "dropped_attributes", 0) or 0),
            }
            for e in span.events
        ],
        "droppedEventsCount": int(getattr(span, "dropped_events", 0)),
        "links": [
            {
                "traceId": format(link.context.trace_id, "032x"),
                "spanId": format(link.context.span_id, "016x"),
                "attributes": encode_attributes(link.attributes),
            }
            for link in span.links
        ],
        "droppedLinksCount": int(getattr(span, "dropped_links", 0)),
        "status": {"code": int(span.status.status_code.value), "message": span.status.description or ""},
        "resource": {"attributes": encode_attributes(resource.attributes if resource is not None else {})},
        "scope": {"name": scope.name if scope else "", "version": (scope.version or "") if scope else ""},
    }


def read_trace_jsonl(path: str | os.PathLike[str], *, decode: bool = True,
                     damaged: list[str] | None = None) -> list[dict[str, Any]]:
    """The spans of a JSONL trace file, in file order.

    With ``decode`` (default) every ``attributes`` list (span, events, links,
    resource) becomes a plain ``{key: value}`` dict and the ``*UnixNano``
    times become ints, which is what a viewer wants; ``decode=False`` returns
    the lines exactly as written. Blank lines are skipped.

    A damaged line (not a JSON object: a span cut short by a full disk or a crash) is skipped,
    not fatal: the spans around it are still read. Each skipped line is reported as
    ``"FILE:LINE: reason"``, appended to ``damaged`` when a list is given, else logged as a warning.

    Raises :class:`DataError` for a missing or unreadable file (a FIFO or device included).
    """
    p = Path(path)
    try:
        with open_regular(p) as fh:  # a FIFO or a device is refused, not read forever
            text = fh.read().decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"trace file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read trace file {p}: {exc}") from exc
    spans: list[dict[str, Any]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        problem = None
        try:
            record = json.loads(line)
        except ValueError as exc:
            problem = f"not a JSON span record ({getattr(exc, 'msg', exc)})"
        except RecursionError:
            problem = "not a JSON span record (nested too deeply)"
        else:
            if not isinstance(record, dict):
                problem = f"not a JSON span record (got {type(record).__name__})"
        if problem is None and decode:
            try:
                record = _decoded(record)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                problem = f"not a span record ({type(exc).__name__})"
        if problem is not None:
            note = f"{p}:{lineno}: {problem}; line skipped"
            if damaged is not None:
                damaged.append(note)
            else:
                _log.warning("%s", note)
            continue
        spans.append(record)
    return spans


def _decoded(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    out["attributes"] = decode_attributes(record.get("attributes"))
    for key in ("startTimeUnixNano", "endTimeUnixNano"):
        if key in out:
            out[key] = int(out[key])
    out["events"] = [
        {**e, "attributes": decode_attributes(e.get("attributes")), "timeUnixNano": int(e.get("timeUnixNano", 0))}
        for e in record.get("events", [])
    ]
    out["links"] = [
        {**link, "attributes": decode_attributes(link.get("attributes"))} for link in record.get("links", [])
    ]
    if isinstance(record.get("resource"), dict):
        out["resource"] = {**record["resource"], "attributes": decode_attributes(record["resource"].get("attributes"))}
    return out
