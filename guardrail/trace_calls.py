"""The guarded calls of a trace: each guardrail span with its chat span and decoded token maps.

Shared by the terminal viewer (:mod:`.viewer`) and the HTML report (:mod:`.report`).
"""

from __future__ import annotations

from typing import Any

from . import semconv
from .telemetry import map_from_attributes

__all__ = ["guarded_calls"]


def guarded_calls(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair each ``apply_guardrail fastrm`` span with its parent ``chat`` span.

    Returns one dict per guarded call: ``chat`` (span dict or None), ``guard`` (span dict),
    ``tokens`` (list of per-token event attribute dicts, in order, with ``map`` decoded or None).
    """
    by_id = {s.get("spanId"): s for s in spans}
    calls = []
    for span in spans:
        if span.get("name") != semconv.GUARDRAIL_SPAN_NAME:
            continue
        tokens = []
        for ev in span.get("events", []):
            if ev.get("name") == semconv.TOKEN_EVENT:
                attrs = dict(ev.get("attributes", {}))
                attrs["map"] = map_from_attributes(attrs)
                tokens.append(attrs)
        tokens.sort(key=lambda a: a.get(semconv.TOKEN_INDEX, 0))
        calls.append({"chat": by_id.get(span.get("parentSpanId")), "guard": span, "tokens": tokens})
    return calls
