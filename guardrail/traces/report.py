"""``guardrail view TRACE --html report.html``: one self-contained HTML page per trace file.

The page needs no network: the styles, the script, the images (as ``data:`` URIs) and the
maps (as JSON numbers) are inside it. Per guarded call it shows the image, the question and
the answer, the text returned to the user, the verdict with the score against the threshold,
the action with its rule and policy, and the per-token maps as an overlay on the image,
with a token slider, a token strip (scored tokens marked) and a colour bar in the map's own
units. The overlay covers the part of the image the model saw (``fastrm.image.box``, else
the centred square, :func:`guardrail.traces.render.default_view_box`) and dims the rest.

Whatever the trace lacks is said on the page: without content capture there is no question,
answer, token text or image (only the image's hash), and maps dropped by the span's byte
budget are listed as such.

The pure part, :func:`report_calls`, turns spans into plain dicts (also used by the tests);
:func:`write_html_report` renders them.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

import guardrail.telemetry.semconv as semconv
from guardrail.telemetry.otlp_json import read_trace_jsonl
from guardrail.traces.calls import guarded_calls

__all__ = ["report_calls", "write_html_report"]

_IMAGE_URL_KEY = (f"{semconv.LLM_INPUT_MESSAGES}.0.{semconv.MESSAGE_CONTENTS}.1."
                  f"{semconv.MESSAGE_CONTENT_IMAGE}.{semconv.IMAGE_URL}")


def _image_uri(chat: dict, guard: dict) -> tuple[str | None, str]:
    """The call's image as a data URI, and where it came from (or why there is none)."""
    uri = chat.get(_IMAGE_URL_KEY)
    if isinstance(uri, str) and uri.startswith("data:image/"):
        return uri, "embedded in the trace (content capture)"
    path = chat.get(semconv.FASTRM_IMAGE_PATH) or guard.get(semconv.FASTRM_IMAGE_PATH)
    if path:
        p = Path(path)
        if p.is_file():
            from PIL import Image

            from guardrail.telemetry.attributes import image_data_uri

            with Image.open(p) as img:
                data = image_data_uri(img, max_side=512, max_bytes=2_000_000)
            if data:
                return data, f"read from {p}"
        return None, f"the image file {path} recorded in the trace is not readable here"
    sha = guard.get(semconv.FASTRM_IMAGE_SHA256) or chat.get(semconv.FASTRM_IMAGE_SHA256)
    if sha:
        return None, f"not in the trace (content capture was off); image SHA-256 {sha[:16]}..."
    return None, "not in the trace (content capture was off)"


def report_calls(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One plain dict per guarded call of ``spans`` (as read by :func:`read_trace_jsonl`).

    Keys: ``trace_id``, ``span_id``, ``model``, ``question``/``answer``/``returned`` (None
    without content capture), ``verdict``, ``score``, ``threshold``, ``action``, ``rule``,
    ``policy``, ``reason``, ``verdict_reason`` (what decided the verdict, or None in older traces),
    ``warnings`` (cropped content, an empty answer), ``flagged``, ``unguarded``, ``error``, ``image`` (data URI or None),
    ``image_note``, ``image_size``, ``box``, ``tokens`` (index, text or None, entropy,
    entropy_normalized, scored, map as nested lists or None), ``claims`` (index, start, end, text,
    verdict, score, redacted, map) and ``missing`` (what the trace lacks).
    """
    out = []
    for call in guarded_calls(spans):
        g = call["guard"].get("attributes", {})
        chat_span = call["chat"] or {}
        chat = chat_span.get("attributes", {})
        image, image_note = _image_uri(chat, g)
        question, answer = call["question"], call["answer"]
        returned = g.get(semconv.GUARDRAIL_RETURNED_TEXT)
        box = g.get(semconv.FASTRM_IMAGE_BOX) or chat.get(semconv.FASTRM_IMAGE_BOX)
        size = g.get(semconv.FASTRM_IMAGE_SIZE) or chat.get(semconv.FASTRM_IMAGE_SIZE)
        tokens = []
        for tok in call["tokens"]:
            m = tok.get("map")
            tokens.append({
                "index": tok.get(semconv.TOKEN_INDEX),
                "text": tok.get(semconv.TOKEN_TEXT),
                "entropy": tok.get(semconv.TOKEN_ENTROPY),
                "entropy_normalized": tok.get(semconv.TOKEN_ENTROPY_NORMALIZED),
                "scored": bool(tok.get(semconv.TOKEN_SCORED, True)),
                "map": None if m is None else [[round(float(v), 5) for v in row] for row in m],
            })
        missing = []
        if question is None:
            missing.append("question and answer text (content capture was off)")
        if tokens and all(t["text"] is None for t in tokens):
            missing.append("token text (content capture was off)")
        if image is None:
            missing.append(f"image: {image_note}")
        dropped = [t["index"] for t in tokens if t["map"] is None]
        if dropped:
            missing.append(f"maps of tokens {dropped} (left out by the span's map byte budget)")
        if not tokens:
            missing.append("per-token maps (the guard failed or recorded none)")
        claims = [{"index": c.get(semconv.CLAIM_INDEX), "start": c.get(semconv.CLAIM_START),
                   "end": c.get(semconv.CLAIM_END), "text": c.get(semconv.CLAIM_TEXT),
                   "verdict": c.get(semconv.CLAIM_VERDICT, "unscored"), "score": c.get(semconv.CLAIM_SCORE),
                   "redacted": bool(c.get(semconv.CLAIM_REDACTED, False)),
                   "map": None if c.get("map") is None else
                   [[round(float(v), 5) for v in row] for row in np.asarray(c["map"]).reshape(np.asarray(c["map"]).shape[-2:])]}
                  for c in call.get("claims", [])]
        for c in claims:  # the text from the answer's offsets when the event carries none (content capture off)
            if c["text"] is None and answer is not None and c["start"] is not None:
                c["text"] = answer[c["start"]:c["end"]]
        out.append({
            "trace_id": call["guard"].get("traceId", ""),
            "span_id": call["guard"].get("spanId", ""),
            "model": chat.get(semconv.GEN_AI_REQUEST_MODEL),
            "question": question,
            "answer": answer,
            "returned": returned,
            "verdict": g.get(semconv.GUARDRAIL_VERDICT),
            "score": g.get(semconv.GUARDRAIL_SCORE),
            "threshold": g.get(semconv.GUARDRAIL_THRESHOLD),
            "action": g.get(semconv.GUARDRAIL_ACTION),
            "rule": g.get(semconv.GUARDRAIL_RULE),
            "policy": f"{g.get(semconv.GUARDRAIL_POLICY_ID)} v{g.get(semconv.GUARDRAIL_POLICY_VERSION)}",
            "reason": g.get(semconv.GUARDRAIL_REASON),
            "verdict_reason": g.get(semconv.GUARDRAIL_VERDICT_REASON),
            "warnings": list(g.get(semconv.GUARDRAIL_WARNINGS) or ()),
            "flagged": bool(g.get(semconv.GUARDRAIL_FLAGGED, False)),
            "unguarded": bool(g.get(semconv.GUARDRAIL_UNGUARDED, False)),
            "error": g.get(semconv.ERROR_TYPE),
            "image": image,
            "image_note": image_note,
            "image_size": list(size) if size else None,
            "box": list(box) if box else None,
            "tokens": tokens,
            "claims": claims,
            "missing": missing,
        })
    return out


def write_html_report(trace: str | Path, out: str | Path, *, title: str | None = None) -> Path:
    """Write the report of every guarded call in the JSONL ``trace`` to ``out``; returns its path.

    Raises :class:`~fastrm_common.errors.DataError` for an unreadable trace. A trace without
    guarded calls gives a page that says so.
    """
    calls = report_calls(read_trace_jsonl(trace))
    title = title or f"fastrm-guard report: {Path(trace).name}"
    data = json.dumps(calls, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    page = (_TEMPLATE.replace("__TITLE__", html.escape(title))
            .replace("__RAMP__", json.dumps(_ramp()))
            .replace("__DATA__", data))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


def _ramp() -> list[list[int]]:
    from guardrail.traces.render import RAMP

    return [list(c) for c in RAMP]


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:12px 20px}header h1{font-size:18px;margin:0}
header p{margin:4px 0 0;color:#c8cdd8;font-size:12px}
main{padding:16px 20px;display:flex;flex-direction:column;gap:16px}
.call{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:14px 16px;display:grid;
 grid-template-columns:minmax(260px,420px) 1fr;gap:18px}
.call h2{grid-column:1/-1;font-size:15px;margin:0;display:flex;gap:10px;align-items:center;flex-wrap:wrap}
.ids{font:11px ui-monospace,monospace;color:#6b7385}
.badge{font-size:12px;padding:2px 8px;border-radius:10px;color:#fff}
.confident{background:#1f8a4c}.uncertain{background:#c0392b}.none{background:#7f8694}
.allow{background:#1f8a4c}.flag{background:#d68910}.abstain{background:#7d3c98}.escalate{background:#2e6fb7}
canvas.overlay{width:100%;height:auto;border:1px solid #d5d9e0;image-rendering:pixelated;background:#333}
table.facts{border-collapse:collapse;width:100%}table.facts td{padding:3px 6px;vertical-align:top;border-bottom:1px solid #eef0f3}
table.facts td:first-child{color:#6b7385;width:9em;white-space:nowrap}
.missing{color:#8a5a00;background:#fff6e0;border-radius:4px;padding:6px 8px;font-size:12px;margin-top:8px}
.meter{position:relative;height:10px;background:#e7e9ee;border-radius:5px;margin-top:4px;max-width:320px}
.meter .fill{position:absolute;left:0;top:0;bottom:0;border-radius:5px;background:#5b6b8c}
.meter .thr{position:absolute;top:-3px;bottom:-3px;width:2px;background:#c0392b}
.strip{display:flex;flex-wrap:wrap;gap:4px;margin:8px 0}
.strip button{font:12px ui-monospace,monospace;border:1px solid #c9ced8;background:#fafbfc;border-radius:4px;padding:2px 6px;cursor:pointer}
.strip button.scored{border-color:#1d2330;font-weight:600}.strip button.nomap{opacity:.45}
.strip button.on{background:#1d2330;color:#fff}
.claims{display:flex;flex-wrap:wrap;gap:4px}.claims button{font:12px ui-monospace,monospace;border-radius:4px;padding:2px 6px;cursor:pointer;border:1px solid #c9ced8;background:#fafbfc}
.claims button.confident{border-color:#2e7d32;background:#e8f5e9}.claims button.uncertain{border-color:#c62828;background:#ffebee;font-weight:600}
.claims button.unscored{border-color:#b08900;background:#fff8e1}.claims button.redacted{text-decoration:line-through}.claims button.on{outline:2px solid #1d2330}
.controls{display:flex;gap:10px;align-items:center}.controls input{flex:1}
.bar{display:flex;align-items:center;gap:6px;font-size:12px;margin-top:6px}.bar canvas{height:12px;width:200px;border:1px solid #ccd}
.readout{font:12px ui-monospace,monospace;margin-top:4px}
.empty{padding:40px;text-align:center;color:#6b7385}
</style></head><body>
<header><h1>__TITLE__</h1><p>Self-contained report written by <code>guardrail view --html</code>: every guarded call of the
trace, with the per-token relevancy maps over the image (colour = the proxy's relevancy; grey = the image; dark = not seen by the model).</p></header>
<main id="calls"></main>
<script id="report-data" type="application/json">__DATA__</script>
<script>
"use strict";
const RAMP = __RAMP__;
const CALLS = JSON.parse(document.getElementById("report-data").textContent);

function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v);
  }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k);
  return e;
}
function fmt(v, d = 3) { return (v === null || v === undefined) ? "-" : Number(v).toFixed(d); }
function rampColour(u) { return RAMP[Math.min(RAMP.length - 1, Math.max(0, Math.floor(u * RAMP.length)))]; }
function mapRange(m) {
  let lo = Infinity, hi = -Infinity;
  for (const row of m) for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
  return [lo, hi];
}
function defaultBox(w, h) { const s = Math.min(w, h); const l = Math.floor((w - s) / 2), t = Math.floor((h - s) / 2); return [l, t, l + s, t + s]; }

function drawOverlay(canvas, img, m, box) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height;
  ctx.clearRect(0, 0, W, H);
  if (!m) { ctx.fillStyle = "#555"; ctx.fillRect(0, 0, W, H); return; }
  const rows = m.length, cols = m[0].length;
  const [lo, hi] = mapRange(m);
  const unit = v => hi - lo < 1e-12 ? 0 : (v - lo) / (hi - lo);
  if (img) {
    ctx.drawImage(img, 0, 0, W, H);
    const px = ctx.getImageData(0, 0, W, H), d = px.data;
    const sx = W / img.naturalWidth, sy = H / img.naturalHeight;
    const [l, t, r, b] = box || defaultBox(img.naturalWidth, img.naturalHeight);
    for (let y = 0; y < H; y++) {
      const oy = (y + 0.5) / sy, row = Math.floor((oy - t) / (b - t) * rows);
      for (let x = 0; x < W; x++) {
        const ox = (x + 0.5) / sx, col = Math.floor((ox - l) / (r - l) * cols);
        const i = 4 * (y * W + x);
        if (row < 0 || row >= rows || col < 0 || col >= cols) {
          for (let c = 0; c < 3; c++) d[i + c] = d[i + c] * 0.35 + 25;
          continue;
        }
        const u = unit(m[row][col]), w = 0.75 * u, grey = (d[i] + d[i + 1] + d[i + 2]) / 3, rgb = rampColour(u);
        for (let c = 0; c < 3; c++) d[i + c] = grey * (1 - w) + rgb[c] * w;
      }
    }
    ctx.putImageData(px, 0, 0);
    if (l > 0.5 || t > 0.5 || r < img.naturalWidth - 0.5 || b < img.naturalHeight - 0.5) {
      // what the model saw, framed black under white dashes: visible on white and dark images alike
      const rect = [l * sx, t * sy, (r - l) * sx, (b - t) * sy];
      ctx.lineWidth = 3; ctx.strokeStyle = "black"; ctx.setLineDash([]); ctx.strokeRect(...rect);
      ctx.lineWidth = 1.5; ctx.strokeStyle = "white"; ctx.setLineDash([5, 3]); ctx.strokeRect(...rect);
      ctx.setLineDash([]);
    }
  } else {
    const cw = W / cols, ch = H / rows;
    for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) {
      const rgb = rampColour(unit(m[r][c]));
      ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`;
      ctx.fillRect(Math.floor(c * cw), Math.floor(r * ch), Math.ceil(cw), Math.ceil(ch));
    }
  }
}

function drawBar(canvas) {
  const ctx = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    const rgb = rampColour(x / canvas.width);
    ctx.fillStyle = `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`; ctx.fillRect(x, 0, 1, canvas.height);
  }
}

function renderCall(call, n) {
  const sec = el("section", {class: "call", id: `call-${n}`, "data-trace-id": call.trace_id, "data-span-id": call.span_id});
  const verdict = call.verdict || (call.unguarded ? "unguarded" : "none");
  sec.append(el("h2", {}, `Call ${n + 1}`,
    el("span", {class: `badge ${call.verdict || "none"}`, "data-field": "verdict", text: verdict}),
    el("span", {class: `badge ${call.action}`, "data-field": "action", text: call.action}),
    el("span", {class: "ids", text: `trace ${call.trace_id}  span ${call.span_id}`})));
  const left = el("div", {});
  const canvas = el("canvas", {class: "overlay", "data-field": "overlay"});
  left.append(canvas);
  const barCanvas = el("canvas", {width: 200, height: 12});
  drawBar(barCanvas);
  const lo = el("span", {"data-field": "map-lo"}), hi = el("span", {"data-field": "map-hi"});
  left.append(el("div", {class: "bar"}, lo, barCanvas, hi, el("span", {text: "relevancy"})));
  const toggle = el("input", {type: "checkbox", "data-field": "toggle"});
  toggle.checked = true;
  left.append(el("label", {class: "readout"}, toggle, " map over the image (untick to see the image's own colours)"));
  const readout = el("div", {class: "readout", "data-field": "readout"});
  left.append(readout);
  left.append(el("div", {class: "readout", text: `image: ${call.image_note}`}));
  sec.append(left);

  const right = el("div", {});
  const facts = el("table", {class: "facts"});
  const row = (k, v, field) => facts.append(el("tr", {}, el("td", {text: k}), el("td", field ? {"data-field": field} : {}, v)));
  row("model", call.model || "-");
  row("question", call.question ?? "(not recorded)", "question");
  row("answer", call.answer ?? "(not recorded)", "answer");
  if (call.returned !== null && call.returned !== undefined && call.returned !== call.answer) row("returned to user", call.returned, "returned");
  const scoreCell = el("div", {}, el("span", {"data-field": "score", text: fmt(call.score)}), " vs threshold ",
    el("span", {"data-field": "threshold", text: fmt(call.threshold)}),
    call.verdict_reason ? el("div", {"data-field": "verdict-reason", text: call.verdict_reason})
    : call.score === null || call.score === undefined ? "" : ` (${call.score < call.threshold ? "below" : "at or above"}; higher = more uncertain)`);
  if (call.score !== null && call.score !== undefined && call.threshold !== null) {
    const top = Math.max(call.score, call.threshold) * 1.25 || 1;
    const meter = el("div", {class: "meter"});
    meter.append(el("div", {class: "fill", style: `width:${100 * call.score / top}%`}));
    meter.append(el("div", {class: "thr", style: `left:${100 * call.threshold / top}%`, title: "threshold"}));
    scoreCell.append(meter);
  }
  row("score", scoreCell);
  row("decision", `${call.action}${call.flagged ? " (flagged)" : ""}${call.unguarded ? " (unguarded)" : ""}, rule ${call.rule}, policy ${call.policy}`, "decision");
  row("reason", call.reason || "-");
  for (const w of call.warnings || []) row("warning", w, "warning");
  const claimBox = el("div", {class: "claims", "data-field": "claims"});
  if ((call.claims || []).length) row("claims", claimBox);
  if (call.error) row("guard error", call.error);
  right.append(facts);
  if (call.missing.length) right.append(el("div", {class: "missing", "data-field": "missing"}, "Not in this trace: " + call.missing.join("; ") + "."));

  const withMaps = call.tokens.filter(t => t.map);
  const strip = el("div", {class: "strip", "data-field": "tokens"});
  const slider = el("input", {type: "range", min: 0, max: Math.max(0, withMaps.length - 1), value: 0, step: 1, "data-field": "slider"});
  if (withMaps.length < 2) slider.disabled = true;
  right.append(el("div", {class: "controls"}, el("span", {text: "token"}), slider));
  right.append(strip);
  sec.append(right);

  let img = null;
  function show(k) {
    const tok = withMaps[k];
    for (const b of strip.children) b.classList.toggle("on", tok && Number(b.dataset.index) === tok.index);
    if (!tok) { readout.textContent = "no map in the trace"; drawOverlay(canvas, img, null, null); return; }
    const [a, b] = mapRange(tok.map);
    lo.textContent = fmt(a); hi.textContent = fmt(b);
    const label = tok.text !== null && tok.text !== undefined ? JSON.stringify(tok.text) : `#${tok.index} (text not recorded)`;
    readout.textContent = `token ${label}: entropy ${fmt(tok.entropy)} nats` +
      (tok.entropy_normalized !== null && tok.entropy_normalized !== undefined ? ` (normalised ${fmt(tok.entropy_normalized)})` : "") +
      (tok.scored ? ", counts in the score" : ", not scored") + `; map ${tok.map.length}x${tok.map[0].length}`;
    readout.dataset.index = tok.index;
    if (img && !toggle.checked) canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
    else drawOverlay(canvas, img, tok.map, call.box);
  }
  toggle.addEventListener("change", () => show(Number(slider.value)));
  (call.claims || []).forEach(c => {
    const b = el("button", {class: `claim ${c.verdict}${c.redacted ? " redacted" : ""}`, "data-claim": c.index,
      title: `${c.verdict}, score ${fmt(c.score)}${c.redacted ? ", removed by redact" : ""}`,
      text: c.text !== null && c.text !== undefined ? c.text : `claim ${c.index}`});
    if (c.map) b.addEventListener("click", () => {
      for (const o of claimBox.children) o.classList.toggle("on", o === b);
      const [a, z] = mapRange(c.map); lo.textContent = fmt(a); hi.textContent = fmt(z);
      readout.textContent = `claim ${JSON.stringify(c.text)}: ${c.verdict} (score ${fmt(c.score)})` +
        (c.redacted ? ", removed by redact" : "") + `; its map: the mean of its tokens' maps`;
      drawOverlay(canvas, img, c.map, call.box);
    });
    else b.disabled = true;
    claimBox.append(b);
  });
  call.tokens.forEach(t => {
    const b = el("button", {class: (t.scored ? "scored" : "") + (t.map ? "" : " nomap"), "data-index": t.index,
      title: `entropy ${fmt(t.entropy)}${t.map ? "" : " (no map in the trace)"}`,
      text: t.text !== null && t.text !== undefined ? t.text : `#${t.index}`});
    if (t.map) b.addEventListener("click", () => { slider.value = withMaps.indexOf(t); show(withMaps.indexOf(t)); });
    else b.disabled = true;
    strip.append(b);
  });
  slider.addEventListener("input", () => show(Number(slider.value)));
  const start = Math.max(0, withMaps.findIndex(t => t.scored));
  slider.value = start;
  if (call.image) {
    img = new Image();
    img.onload = () => {
      const scale = 420 / Math.max(img.naturalWidth, img.naturalHeight);
      canvas.width = Math.round(img.naturalWidth * scale); canvas.height = Math.round(img.naturalHeight * scale);
      show(start); sec.dataset.ready = "1";
    };
    img.src = call.image;
  } else {
    canvas.width = 320; canvas.height = 320; show(start); sec.dataset.ready = "1";
  }
  return sec;
}

const root = document.getElementById("calls");
if (!CALLS.length) root.append(el("div", {class: "empty", text: "No guarded call in this trace."}));
CALLS.forEach((c, n) => root.append(renderCall(c, n)));
</script></body></html>
"""
