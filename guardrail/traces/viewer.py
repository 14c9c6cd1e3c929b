"""``guardrail view``: the guarded calls of a JSONL trace in the terminal, as explained PNG figures
(``--png DIR``) or as one self-contained HTML page (``--html FILE``, :mod:`guardrail.traces.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.otlp_json import read_trace_jsonl
from guardrail.traces.render import explained_figure, heatmap_text
from guardrail.traces.report import write_html_report
from guardrail.traces.calls import guarded_calls

__all__ = ["guarded_calls", "token_label", "view_trace"]


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


_CLAIM_STYLE = {"confident": "green", "uncertain": "bold red", "unscored": "yellow"}


def _claim_label(c: dict[str, Any], answer: str | None) -> str:
    text = c.get(semconv.CLAIM_TEXT)
    if text is None and answer is not None:
        text = answer[c.get(semconv.CLAIM_START, 0): c.get(semconv.CLAIM_END, 0)]
    return repr(text) if text is not None else f"#{c.get(semconv.CLAIM_INDEX)} (text not recorded)"


def _claims_text(claims: list[dict[str, Any]], answer: str | None) -> Text:
    """The claims in one line each: verdict (coloured), score, removed or kept."""
    out = Text("\nclaims\n")
    for c in claims:
        verdict = c.get(semconv.CLAIM_VERDICT, "unscored")
        out.append(f"  {c.get(semconv.CLAIM_INDEX)}  ")
        out.append(f"{verdict:9}", style=_CLAIM_STYLE.get(verdict))
        score = c.get(semconv.CLAIM_SCORE)
        out.append(f"  score {_num(score)}  " + ("removed  " if c.get(semconv.CLAIM_REDACTED) else ""))
        out.append(_claim_label(c, answer) + "\n", style="strike" if c.get(semconv.CLAIM_REDACTED) else None)
    return out


def token_label(token_attributes: dict[str, Any]) -> str:
    """``'red'`` with content capture, else ``#3 (text not recorded)``."""
    text = token_attributes.get(semconv.TOKEN_TEXT)
    return repr(text) if text is not None else f"#{token_attributes.get(semconv.TOKEN_INDEX)} (text not recorded)"


def _load_image(chat: dict, guard: dict):
    path = chat.get(semconv.FASTRM_IMAGE_PATH) or guard.get(semconv.FASTRM_IMAGE_PATH)
    if path and Path(path).is_file():
        from PIL import Image

        with Image.open(path) as img:
            return img.convert("RGB")
    uri = chat.get(f"{semconv.LLM_INPUT_MESSAGES}.0.{semconv.MESSAGE_CONTENTS}.1."
                   f"{semconv.MESSAGE_CONTENT_IMAGE}.{semconv.IMAGE_URL}")
    if isinstance(uri, str) and uri.startswith("data:image/") and ";base64," in uri:
        import base64
        import io

        from PIL import Image

        return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")
    return None


def view_trace(path: str | Path, *, png_dir: str | Path | None = None, console: Console | None = None,
               all_tokens: bool = False, html: str | Path | None = None) -> int:
    """Print every guarded call of a trace file.

    ``png_dir``: also write one explained figure per token map, named
    ``<trace id>-<span id>-token<NNN>.png``; ``html``: also write the HTML report there.
    """
    console = console or Console()
    damaged: list[str] = []
    calls = guarded_calls(read_trace_jsonl(path, damaged=damaged))
    for note in damaged:  # a line cut short by a full disk or a crash: the rest of the file still shows
        console.print(f"[yellow]warning:[/yellow] {escape(note)}", highlight=False)
    if not calls:
        console.print(f"[yellow]no guarded call in {path}[/yellow]")
        return 1
    for n, call in enumerate(calls):
        g = call["guard"]["attributes"]
        chat = (call["chat"] or {}).get("attributes", {})
        head = Table.grid(padding=(0, 2))
        head.add_row("model", str(chat.get(semconv.GEN_AI_REQUEST_MODEL, "?")))
        question, answer = call["question"], call["answer"]
        head.add_row("question", escape(question) if question is not None else "[dim](not recorded: content capture was off)[/dim]")
        head.add_row("answer", escape(answer) if answer is not None else "[dim](not recorded)[/dim]")
        returned = g.get(semconv.GUARDRAIL_RETURNED_TEXT)
        if returned is not None and returned != answer:
            head.add_row("returned", escape(returned))
        score = g.get(semconv.GUARDRAIL_SCORE)
        verdict_line = (f"{g.get(semconv.GUARDRAIL_VERDICT, '-')}  (score {_num(score)} vs threshold "
                        f"{_num(g.get(semconv.GUARDRAIL_THRESHOLD))})")
        action_line = (f"{g.get(semconv.GUARDRAIL_ACTION)}  [{g.get(semconv.GUARDRAIL_POLICY_ID)} "
                       f"v{g.get(semconv.GUARDRAIL_POLICY_VERSION)}, rule {g.get(semconv.GUARDRAIL_RULE)}]")
        head.add_row("verdict", verdict_line)
        if g.get(semconv.GUARDRAIL_VERDICT_REASON):
            head.add_row("why", escape(str(g[semconv.GUARDRAIL_VERDICT_REASON])))
        head.add_row("action", escape(action_line))
        for warning in g.get(semconv.GUARDRAIL_WARNINGS) or ():
            head.add_row("[yellow]warning[/yellow]", escape(str(warning)))
        body: list[Any] = [head]
        if call.get("claims"):
            body.append(_claims_text(call["claims"], answer))
            for c in call["claims"]:  # where each claim the guard doubts looked
                if c.get(semconv.CLAIM_VERDICT) == "uncertain" and c["map"] is not None:
                    body.append(f"\nclaim {c.get(semconv.CLAIM_INDEX)} {escape(_claim_label(c, answer))} "
                                f"(uncertain{', removed' if c.get(semconv.CLAIM_REDACTED) else ''}): its map")
                    body.append(heatmap_text(np.asarray(c["map"]).reshape(np.asarray(c["map"]).shape[-2:])))
        image = _load_image(chat, g) if png_dir is not None else None
        box = g.get(semconv.FASTRM_IMAGE_BOX) or chat.get(semconv.FASTRM_IMAGE_BOX)
        for tok in call["tokens"]:
            scored = tok.get(semconv.TOKEN_SCORED, True)
            if tok["map"] is None or (not scored and not all_tokens):
                continue
            label = token_label(tok)
            ent = tok.get(semconv.TOKEN_ENTROPY_NORMALIZED, tok.get(semconv.TOKEN_ENTROPY))
            body.append(f"\ntoken {escape(label)}  entropy {ent:.3f}" if ent is not None else f"\ntoken {escape(label)}")
            panels = tok.get("region_maps") or [(None, tok["map"])]
            for k, (region, grid_map) in enumerate(panels):  # one panel per image region
                if region is not None and len(panels) > 1:
                    rows, cols = region["grid"]
                    body.append(f"image {region.get('image', '?')} ({region.get('kind', '?')}, {rows}x{cols})")
                body.append(heatmap_text(grid_map))
                if png_dir is not None and (region is None or region.get("kind") in ("full", "base", "global")):
                    ids = f"{call['guard'].get('traceId', 'trace')}-{call['guard'].get('spanId', n)}"
                    suffix = f"-region{k}" if len(panels) > 1 else ""
                    out = Path(png_dir) / f"{ids}-token{tok.get(semconv.TOKEN_INDEX, 0):03d}{suffix}.png"
                    title = f"Q: {question}   A: {answer}" if question is not None else "question and answer not recorded (content capture off)"
                    explained_figure(out, image, grid_map, box=tuple(box) if box else None, title=title,
                                     lines=(f"verdict {verdict_line}; action {action_line}",
                                            f"token {label}, entropy {_num(ent)}"
                                            + ("" if image is not None else "; image not in the trace")))
        console.print(Panel(Group(*body), title=f"guarded call {n}", expand=False))
    if png_dir is not None:
        console.print(f"figures written to {png_dir}")
    if html is not None:
        console.print(f"report written to {write_html_report(path, html)}")
    return 0
