"""``guardrail demo``: the guard on a handful of ShapesVQA scenes, offline, on the shipped reference model.

From a pool of scenes (a fixed seed), it answers every question under guard, then shows a few the
model got right and a few it got wrong (ground truth is known in ShapesVQA), each with its verdict,
action and a terminal heatmap of the answer; it writes PNG overlays and a JSONL trace.

When the preset has POPE questions (``pope_examples``: "Is there a blue square?" about objects
present and absent, the absent ones chosen among those that usually come with what is in the
picture), it also asks those and shows object hallucinations (a "yes" about an absent object):
the first one the verdict caught and the first one it missed, each with where its map looked.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

from fastrm_common.errors import InputError
from fastrm_common.presets import DEFAULT_PRESET, get_preset, list_presets
from fastrm_common.vqa import is_correct

from guardrail.guard import Guard
from guardrail.traces.render import explained_figure, heatmap_text, view_box

__all__ = ["run_demo"]


def _first_word(text: str) -> str:
    words = text.strip().lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


def _describe(guard: Guard, examples: list, out: Path, console: Console, max_new_tokens: int = 40) -> dict:
    """Describe the scenes under guard: each description's claims by verdict, and for the first
    description with an invented object the guard caught, where that object's map looked."""
    rows = []
    for ex in examples:
        path = out / "images" / f"{ex.id}.png"
        ex.image.save(path)
        res = guard.generate(path, ex.question, max_new_tokens=max_new_tokens)
        labels = {(m.start, m.end): m.label for m in ex.label_text(res.answer)} if hasattr(ex, "label_text") else {}
        rows.append((ex, res, labels))
    claims = [(ex, res, c, labels.get((c.start, c.end))) for ex, res, labels in rows for c in res.claims]
    invented = [t for t in claims if t[3] == "invented"]
    caught = [t for t in invented if t[2].verdict == "uncertain"]
    show = [r for r in rows if any(t[0] is r[0] for t in caught)][:1] + [r for r in rows if not any(
        t[0] is r[0] for t in caught)][:1]
    style = {"confident": "green", "uncertain": "bold red"}
    for ex, res, labels in show:
        head = Table.grid(padding=(0, 2))
        head.add_row("question", escape(ex.question))
        head.add_row("answer", escape(res.answer))
        head.add_row("action", f"{res.action}  -> user sees {res.text!r}")
        table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        for col in ("claim", "verdict", "score", "truth"):
            table.add_column(col)
        for c in res.claims:
            truth = labels.get((c.start, c.end), "-")
            table.add_row(escape(c.text) + (" (removed)" if c.redacted else ""),
                          f"[{style.get(c.verdict or '', 'yellow')}]{c.verdict or 'unscored'}[/]",
                          "-" if c.score is None else f"{c.score:.3f}", truth.replace("_", " "))
        body = [head, table]
        for ex2, res2, c, label in caught:
            if ex2 is ex and c.map is not None and c.object and hasattr(ex, "describe_claim_map"):
                where = ex.describe_claim_map(c.map, c.object)
                body += [f"\nthe invented {c.object!r} (caught): its map - {escape(where)}", heatmap_text(c.map)]
                break
        title = f"{ex.id} [describe: {'an invented object CAUGHT' if any(t[0] is ex for t in caught) else 'claims'}]"
        console.print(Panel(Group(*body), title=escape(title), border_style="yellow", expand=False))
    console.print(f"descriptions: {len(rows)} scenes, {len(claims)} claims, {len(invented)} invented objects, "
                  f"{len(caught)} caught (uncertain).")
    return {"descriptions": len(rows), "claims": len(claims), "invented": len(invented),
            "invented_caught": len(caught)}


def run_demo(
    out_dir: str | Path = "guardrail-demo",
    *,
    model: str = "reference",
    proxy: str | None = None,
    calibration: str | None = None,
    policy: str = "default",
    seed: int = 2026,
    pool: int = 24,
    pope_scenes: int = 24,
    pope_seed: int = 2029,
    describe: int = 6,
    show_right: int = 4,
    show_wrong: int = 3,
    max_new_tokens: int = 8,
    console: Console | None = None,
    otlp_endpoint: str | None = None,
    phoenix: str | None = None,
    console_spans: bool = False,
) -> dict:
    """Run the demo; returns a summary dict (counts, paths). See the module docstring.

    Spans go to ``out_dir/trace.jsonl`` and, with ``otlp_endpoint`` (or the standard
    ``OTEL_EXPORTER_OTLP_*`` variables), to a collector; ``phoenix`` sends them to an Arize Phoenix
    and posts each verdict there as an annotation. Metrics go to the same OTLP endpoint.
    """
    preset = get_preset(model) or get_preset(DEFAULT_PRESET)  # whose example scenes the demo asks about
    if preset is None or preset.examples is None:
        raise InputError(f"the demo needs a preset with example scenes (installed: {', '.join(list_presets()) or 'none'})")
    console = console or Console()
    start = time.perf_counter()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    trace_path = out / "trace.jsonl"
    trace_path.unlink(missing_ok=True)
    from types import SimpleNamespace

    from guardrail.telemetry.setup import telemetry_from_args

    provider, meters = telemetry_from_args(
        SimpleNamespace(otlp_endpoint=otlp_endpoint, phoenix=phoenix, console_spans=console_spans),
        jsonl_path=trace_path)
    guard = Guard.from_pretrained(model, proxy=proxy, calibration=calibration, policy=policy,
                                  tracer_provider=provider, meter_provider=meters, capture_content=True)
    console.print(f"[bold]fastrm-guard demo[/bold]: model {guard.model_name}, policy {guard.policy.id} "
                  f"v{guard.policy.version}, {guard.calibration_id.split(' data:')[0]}")
    examples = list(preset.examples(pool, seed))
    descriptions = list(preset.describe_examples(describe, seed + 1)) if preset.describe_examples and describe > 0 else []
    probes = list(preset.pope_examples(pope_scenes, pope_seed)) if preset.pope_examples and pope_scenes > 0 else []
    n_plain = len(examples)
    examples += probes
    paths = []
    for ex in examples:
        p = out / "images" / f"{ex.id}.png"
        ex.image.save(p)
        paths.append(p)
    results = []
    for ex, path in zip(examples[:n_plain], paths):  # one call per scene, so each gets its own trace
        results.append(guard.generate(path, ex.question, max_new_tokens=max_new_tokens))
    for i in range(n_plain, len(examples), 16):  # POPE questions in batches (a span per row)
        results += guard.generate_batch([(p, e.question) for e, p in zip(examples[i:i + 16], paths[i:i + 16])],
                                        max_new_tokens=max_new_tokens)
    if descriptions:  # long answers under a policy that removes the claims the guard cannot support
        redacting = Guard(guard.model, guard.processor, proxy=guard.proxy, calibration=guard.calibration,
                          claims=guard.claims, claim_calibration=guard.claim_calibration, policy="redact-claims",
                          tracer_provider=provider, meter_provider=meters, capture_content=True)
        described = _describe(redacting, descriptions, out, console)
    else:
        described = {}
    plain = list(zip(examples, paths, results))[:n_plain]
    right = [(e, p, r) for e, p, r in plain if is_correct(r.answer, e.answers)]
    wrong = [(e, p, r) for e, p, r in plain if not is_correct(r.answer, e.answers)]
    pope = list(zip(examples, paths, results))[n_plain:]
    hallucinated = [(e, p, r) for e, p, r in pope if e.answers == ["no"] and _first_word(r.answer) == "yes"]
    caught = [h for h in hallucinated if h[2].verdict == "uncertain"]
    missed = [h for h in hallucinated if h[2].verdict != "uncertain"]
    shown = [(*t, None) for t in right[:show_right] + wrong[:show_wrong]]
    shown += [(*t, "hallucination CAUGHT") for t in caught[:1]] + [(*t, "hallucination MISSED") for t in missed[:1]]
    for ex, path, res, label in shown:
        ok = is_correct(res.answer, ex.answers)
        head = Table.grid(padding=(0, 2))
        head.add_row("question", escape(ex.question))
        head.add_row("answer", f"{res.answer!r}  ({'right' if ok else 'WRONG'}; truth {ex.answers[0]!r})")
        score = "-" if res.score is None else f"{res.score:.3f}"
        threshold = "none (nothing is confident)" if res.threshold is None else f"{res.threshold:.3f}"
        head.add_row("verdict", f"{res.verdict}  (score {score} vs threshold {threshold})")
        head.add_row("action", f"{res.action}  -> user sees {res.text!r}")
        body = [head]
        where = None
        if res.answer_map is not None and hasattr(ex, "describe_map"):
            where = ex.describe_map(res.answer_map)
            head.add_row("map", escape(where))
        if res.answer_map is not None:
            body += ["\nwhere the answer looked:", heatmap_text(res.answer_map)]
            from PIL import Image

            with Image.open(path) as img:
                explained_figure(out / f"{ex.id}_overlay.png", img, res.answer_map,
                                 box=view_box(guard.processor, *img.size), title=f"Q: {ex.question}   A: {res.answer}",
                                 lines=(f"verdict {res.verdict} (score {score} vs threshold {threshold}); "
                                        f"action {res.action} -> user sees {res.text!r}",
                                        "map: mean over the answer's scored tokens" + (f"; {where}" if where else "")))
        style = "green" if ok else ("yellow" if label == "hallucination CAUGHT" else "red")
        kind = f"{ex.family}: {label}" if label else ex.family
        console.print(Panel(Group(*body), title=escape(f"{ex.id} [{kind}]"), border_style=style, expand=False))
    if pope:
        negatives = [e for e, _, _ in pope if e.answers == ["no"]]
        sampling = getattr(negatives[0], "pope", "") if negatives else ""
        line = (f"POPE ({sampling} negatives): {len(pope)} questions about "
                f"{pope_scenes} scenes, {len(negatives)} about absent objects; {len(hallucinated)} hallucinated \"yes\", "
                f"{len(caught)} caught (uncertain), {len(missed)} missed (confident).")
        console.print(line)
    provider.shutdown()
    meters.shutdown()
    n_right = len(right)
    plain_results = results[:n_plain]
    confident = [r for r in plain_results if r.verdict == "confident"]
    conf_right = sum(is_correct(r.answer, e.answers) for e, r in zip(examples, plain_results) if r.verdict == "confident")
    summary = {
        "scenes": len(plain_results),
        "accuracy": n_right / len(plain_results),
        "confident": len(confident),
        "precision_confident": conf_right / len(confident) if confident else None,
        "pope_questions": len(pope),
        "hallucinated": len(hallucinated),
        "hallucinations_caught": len(caught),
        **described,
        "trace": str(trace_path),
        "overlays": str(out),
        "seconds": time.perf_counter() - start,
    }
    acc = f"{summary['accuracy']:.0%}"
    prec = "-" if summary["precision_confident"] is None else f"{summary['precision_confident']:.0%}"
    console.print(f"{len(plain_results)} scenes: accuracy {acc}; {len(confident)} confident, of which {prec} right.")
    # one page for every call (seconds); `view --png` draws a figure per token of every call (minutes here)
    console.print(f"overlays: {out}/*_overlay.png   trace: {trace_path}")
    console.print(f"every call on one page: guardrail view {trace_path} --html {out}/report.html")
    console.print(f"done in {summary['seconds']:.1f} s")
    return summary
