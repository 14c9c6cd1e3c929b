"""``guardrail view``: render the guarded calls of a JSONL trace in the terminal (and as PNG overlays)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from . import semconv
from .guard import IMAGE_PATH_ATTRIBUTE as IMAGE_PATH
from .otlp_json import read_trace_jsonl
from .render import heatmap_text, save_overlay
from .telemetry import map_from_attributes

__all__ = ["guarded_calls", "view_trace"]



def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


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


def view_trace(path: str | Path, *, png_dir: str | Path | None = None, console: Console | None = None,
               all_tokens: bool = False) -> int:
    """Print every guarded call of a trace file; with ``png_dir`` also write one overlay per token map."""
    console = console or Console()
    calls = guarded_calls(read_trace_jsonl(path))
    if not calls:
        console.print(f"[yellow]no guarded call in {path}[/yellow]")
        return 1
    image_cache: dict[str, Any] = {}
    for n, call in enumerate(calls):
        g = call["guard"]["attributes"]
        chat = (call["chat"] or {}).get("attributes", {})
        head = Table.grid(padding=(0, 2))
        head.add_row("model", str(chat.get(semconv.GEN_AI_REQUEST_MODEL, "?")))
        from .telemetry import message_text

        if semconv.GEN_AI_INPUT_MESSAGES in chat:
            head.add_row("question", message_text(chat[semconv.GEN_AI_INPUT_MESSAGES]))
        if semconv.GEN_AI_OUTPUT_MESSAGES in chat:
            head.add_row("returned", message_text(chat[semconv.GEN_AI_OUTPUT_MESSAGES]))
        score = g.get(semconv.GUARDRAIL_SCORE)
        head.add_row("verdict", f"{g.get(semconv.GUARDRAIL_VERDICT, '-')}  (score "
                     f"{'-' if score is None else f'{score:.3f}'} vs threshold {_num(g.get(semconv.GUARDRAIL_THRESHOLD))})")
        head.add_row("action", escape(f"{g.get(semconv.GUARDRAIL_ACTION)}  [{g.get(semconv.GUARDRAIL_POLICY_ID)} "
                     f"v{g.get(semconv.GUARDRAIL_POLICY_VERSION)}, rule {g.get(semconv.GUARDRAIL_RULE)}]"))
        body = [head]
        image = None
        image_path = chat.get(IMAGE_PATH)
        if png_dir is not None and image_path and Path(image_path).is_file():
            from PIL import Image

            image = image_cache.setdefault(image_path, Image.open(image_path).convert("RGB"))
        for tok in call["tokens"]:
            scored = tok.get(semconv.TOKEN_SCORED, True)
            if tok["map"] is None or (not scored and not all_tokens):
                continue
            label = tok.get(semconv.TOKEN_TEXT, f"#{tok.get(semconv.TOKEN_INDEX)}")
            ent = tok.get(semconv.TOKEN_ENTROPY_NORMALIZED, tok.get(semconv.TOKEN_ENTROPY))
            body.append(f"\ntoken {label!r}  entropy {ent:.3f}" if ent is not None else f"\ntoken {label!r}")
            body.append(heatmap_text(tok["map"]))
            if png_dir is not None:
                out = Path(png_dir) / f"call{n:03d}_token{tok.get(semconv.TOKEN_INDEX):03d}.png"
                save_overlay(out, image, tok["map"])
        from rich.console import Group

        console.print(Panel(Group(*body), title=f"guarded call {n}", expand=False))
    if png_dir is not None:
        console.print(f"overlays written to {png_dir}")
    return 0
