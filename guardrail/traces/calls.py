"""The guarded calls of a trace: each guardrail span with its chat span and decoded token maps.

Shared by the terminal viewer (:mod:`.viewer`) and the HTML report (:mod:`.report`).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.attributes import map_from_attributes, message_text

__all__ = ["guarded_calls"]


def guarded_calls(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pair each ``apply_guardrail fastrm`` span with its parent ``chat`` span.

    Returns one dict per guarded call: ``chat`` (span dict or None), ``guard`` (span dict),
    ``question`` and ``answer`` (the row's own, from the guardrail span, else from the chat span's
    messages; None without content capture), ``tokens`` (list of per-token event attribute dicts, in order, with ``map`` decoded or None,
    and ``region_maps``: ``[(region, (rows, cols) map)]``, one per image region of the prompt when
    the span records its regions, else ``[(None, map)]``), and ``claims`` (one attribute dict per
    claim event of a several-claim answer: offsets, verdict, score, redacted, ``map`` decoded).
    """
    by_id = {s.get("spanId"): s for s in spans}
    calls = []
    for span in spans:
        if not semconv.is_guardrail_span(span.get("name", "")):
            continue
        tokens, claims = [], []
        regions = _regions(span.get("attributes", {}))
        for ev in span.get("events", []):
            if ev.get("name") in (semconv.TOKEN_EVENT, semconv.CLAIM_EVENT):
                attrs = dict(ev.get("attributes", {}))
                attrs["map"] = map_from_attributes(attrs) if semconv.MAP_DATA in attrs else None
                attrs["region_maps"] = _split(attrs["map"], regions)
                (tokens if ev["name"] == semconv.TOKEN_EVENT else claims).append(attrs)
        tokens.sort(key=lambda a: a.get(semconv.TOKEN_INDEX, 0))
        claims.sort(key=lambda a: a.get(semconv.CLAIM_INDEX, 0))
        chat = by_id.get(span.get("parentSpanId"))
        calls.append({"chat": chat, "guard": span, "tokens": tokens, "claims": claims,
                      "question": _text(span, chat, semconv.GUARDRAIL_QUESTION, semconv.GEN_AI_INPUT_MESSAGES),
                      "answer": _text(span, chat, semconv.GUARDRAIL_ANSWER, semconv.GEN_AI_OUTPUT_MESSAGES)})
    return calls


def _text(guard: dict, chat: dict | None, own: str, messages: str) -> str | None:
    """A row's text: the guardrail span's attribute ``own`` (a batch row's question is only there), else
    the chat span's ``messages``."""
    value = guard.get("attributes", {}).get(own)
    if value is None:
        chat_attrs = (chat or {}).get("attributes", {})
        value = message_text(chat_attrs[messages]) if messages in chat_attrs else None
    return value


def _regions(attributes: dict[str, Any]) -> list[dict] | None:
    raw = attributes.get(semconv.FASTRM_MAP_REGIONS)
    if not raw:
        return None
    try:
        regions = json.loads(raw)
        return [r for r in regions if isinstance(r, dict) and len(r.get("grid", ())) == 2] or None
    except (TypeError, ValueError):
        return None


def _split(m: np.ndarray | None, regions: list[dict] | None) -> list[tuple[dict | None, np.ndarray]]:
    """One (rows, cols) map per region, cut from a token's map flat over the regions in order."""
    if m is None:
        return []
    flat = np.asarray(m).reshape(-1)
    sizes = [int(r["grid"][0]) * int(r["grid"][1]) for r in regions or ()]
    if not regions or sum(sizes) != flat.size:
        return [(None, np.asarray(m))]
    out, start = [], 0
    for r, n in zip(regions, sizes):
        out.append((r, flat[start : start + n].reshape(int(r["grid"][0]), int(r["grid"][1]))))
        start += n
    return out
