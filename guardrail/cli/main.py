"""The ``guardrail`` command: demo, run, serve, calibrate, view, policy check.

Each command parses its arguments, calls a library function and prints with rich.
Exit codes: 0 success, 1 a check failed / nothing to show, 2 bad input (GuardrailError).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fastrm_common.errors import GuardrailError
from fastrm_common.presets import DEFAULT_PRESET, preset_path

from guardrail.telemetry.setup import telemetry_from_args

__all__ = ["build_parser", "main"]


def _cmd_demo(args, console: Console) -> int:
    from guardrail.cli.demo import run_demo

    run_demo(args.out, model=args.model, proxy=args.proxy, calibration=args.calibration, policy=args.policy,
             seed=args.seed, pool=args.pool, pope_scenes=args.pope_scenes, pope_seed=args.pope_seed, console=console, otlp_endpoint=args.otlp_endpoint,
             phoenix=args.phoenix, console_spans=args.console_spans)
    return 0


def _cmd_run(args, console: Console) -> int:
    from guardrail.guard import Guard
    from guardrail.traces.render import explained_figure, heatmap_text, view_box

    provider, meters = telemetry_from_args(args, jsonl_path=args.trace)
    guard = Guard.from_pretrained(args.model, proxy=args.proxy, calibration=args.calibration, policy=args.policy,
                                  tracer_provider=provider, meter_provider=meters, capture_content=args.capture_content,
                                  dtype=args.dtype, device=args.device)
    result = guard.generate(args.image, args.question, tags=args.tag or (), max_new_tokens=args.max_new_tokens)
    provider.shutdown()
    meters.shutdown()
    if args.json:
        console.print_json(result.model_dump_json(exclude={"maps"} if not args.maps else None))
        return 0
    table = Table.grid(padding=(0, 2))
    table.add_row("answer", repr(result.answer))
    table.add_row("verdict", f"{result.verdict} (score {result.score if result.score is None else round(result.score, 4)}"
                  f" vs threshold {round(result.threshold, 4)})")
    table.add_row("action", escape(f"{result.action} [rule {result.rule}] -> {result.text!r}"))
    table.add_row("timings", f"model {result.timings.model_s:.3f} s, guard {result.timings.guard_s:.3f} s")
    if result.error:
        table.add_row("guard error", result.error)
    console.print(table)
    if result.answer_map is not None:
        console.print(heatmap_text(result.answer_map))
        if args.png:
            from guardrail.guard import load_image

            img = load_image(args.image)
            score = "-" if result.score is None else f"{result.score:.3f}"
            path = explained_figure(args.png, img, result.answer_map, box=view_box(guard.processor, *img.size),
                                    title=f"Q: {args.question}   A: {result.answer}",
                                    lines=(f"verdict {result.verdict} (score {score} vs threshold "
                                           f"{result.threshold:.3f}); action {result.action} [rule {result.rule}]",
                                           "map: mean over the answer's scored tokens"))
            console.print(f"overlay: {path}")
    return 0


def _cmd_serve(args, console: Console) -> int:
    from guardrail.cli.serve import serve_command

    return serve_command(args, console)


def telemetry_args(p: argparse.ArgumentParser) -> None:
    """The OpenTelemetry options every command that makes guarded calls takes."""
    p.add_argument("--otlp-endpoint", default=None,
                   help="send spans and metrics to this OTLP/HTTP collector, e.g. http://localhost:4318 "
                        "(default: the standard OTEL_EXPORTER_OTLP_* variables, if set)")
    p.add_argument("--phoenix", default=None, metavar="URL",
                   help="send to an Arize Phoenix at URL (OTLP) and post each verdict there as a span annotation")
    p.add_argument("--console-spans", action="store_true", help="print the spans")


PRESETS = {
    # the FastRM paper's configuration: mean normalised map entropy, midpoint of the class means, no gate
    "paper": {"score": "map_entropy", "aggregation": "mean", "rule": "paper_midpoint", "novelty_quantile": None},
}


def _score_params(args) -> dict:
    return {} if args.aggregation is None else {"aggregation": args.aggregation}


def _cmd_calibrate(args, console: Console) -> int:
    from calibration import plot_calibration

    from guardrail.calibrate import calibrate_scores, read_signals, write_scores, write_signals

    if args.preset is not None:
        for key, value in PRESETS[args.preset].items():
            setattr(args, key, value)
    if args.from_signals:
        rows, meta = read_signals(args.from_signals)
        identity = {k: meta.get(k) for k in ("model_id", "model_hash", "proxy_id", "proxy_hash", "dataset_hash")}
    else:
        if not args.data:
            raise GuardrailError("--data is required (or --from-signals with stored signals)")
        rows, identity = _answer_records(args, console)
        if args.signals_out:
            write_signals(args.signals_out, rows, meta=identity)
            console.print(f"signals: {args.signals_out}")
    if args.scores_out:
        write_scores(Path(args.scores_out), rows)
    cal, side = calibrate_scores(
        rows, score=args.score, score_params=_score_params(args), rule=args.rule, fit_fraction=args.fit_fraction,
        seed=args.seed, target_precision=args.target_precision, delta=args.delta,
        novelty_quantile=args.novelty_quantile, group_by=args.group_by, **identity,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cal.save(args.out)
    _print_score_table(console, side)
    _print_calibration(console, cal, side)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_calibration(cal, side["heldout_scores"], side["heldout_correct"], args.plot,
                         title=f"{side['score_label']}, {cal.rule}\nhistograms: held-out answers (n={side['n_heldout']}); "
                               f"KDE curves: fitting answers (n={side['n_fit']})")
        console.print(f"plot: {args.plot} (histograms: the held-out answers)")
    console.print(f"calibration written to {args.out}")
    return 0


def _answer_records(args, console: Console):
    from calibration import dataset_hash, read_vqa_jsonl
    from fastrm_core import FastRMProxy, load_vlm, weights_fingerprint

    from guardrail.calibrate import model_identity, score_records

    records, problems = read_vqa_jsonl(args.data, strict=args.strict)
    for p in problems:
        console.print(f"[yellow]skipped[/yellow] {escape(str(p))}")
    if args.limit:
        records = records[: args.limit]
    proxy_path = args.proxy or preset_path(args.model, "proxy")
    if proxy_path is None:
        raise GuardrailError("--proxy is required for models other than a preset (such as the shipped 'reference')")
    model, processor = load_vlm(args.model, dtype=args.dtype, device=args.device)
    proxy = FastRMProxy.from_pretrained(proxy_path).to(next(model.parameters()).device)
    with Progress(TextColumn("[bold]answering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=False) as progress:
        task = progress.add_task("answering", total=len(records))
        rows, skipped = score_records(model, processor, proxy, records, max_new_tokens=args.max_new_tokens,
                                      batch_size=args.batch_size, prompt_suffix=args.prompt_suffix,
                                      progress=lambda n: progress.advance(task, n))
    for s in skipped:
        console.print(f"[yellow]not scored[/yellow] {escape(s)}")
    identity = {"model_id": model_identity(model), "model_hash": weights_fingerprint(model), "proxy_id": Path(proxy_path).name,
                "proxy_hash": proxy.fingerprint(), "dataset_hash": dataset_hash(args.data)}
    return rows, identity


def _print_score_table(console: Console, side: dict) -> None:
    """Every available score's held-out AUROC for predicting a wrong answer, overall and per family."""
    table_rows = side.get("score_table") or []
    if not table_rows:
        return
    fams = side.get("families") or []
    table = Table(title=f"held-out AUROC of each score ({side['n_heldout']} answers; 1 = perfect, 0.5 = chance)")
    table.add_column("score", no_wrap=True)
    table.add_column("all", justify="right")
    for fam in fams:
        table.add_column(fam[:10], justify="right")
    for row in table_rows:
        mark = " *" if row["label"] == side.get("score_label") else ""
        table.add_row(row["label"] + mark, _fmt(row["auroc"]), *[_fmt(row["families"].get(f)) for f in fams])
    console.print(table)
    console.print("* the score in use. novelty and fused are fitted on the fitting answers only.")


def _fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _print_calibration(console: Console, cal, side: dict) -> None:
    """The rules side by side, readable at 80 columns: the rates in one table, the counts in another."""
    rows = cal.rules_table()
    title = (f"rules on {side.get('score_label', cal.score.name)}: held-out figures ({side['n_heldout']} answers; "
             f"fitted on {side['n_fit']}; accuracy {_fmt(side['accuracy_heldout'], True)})")
    rates = Table(title=title)
    rates.add_column("rule", no_wrap=True)
    for col in ("threshold", "AUROC", "share\nconfident", "precision\nconfident", "precision\nuncertain"):
        rates.add_column(col, justify="right")
    counts = Table(title="counts on the same answers")
    counts.add_column("rule", no_wrap=True)
    for col in ("TP", "FP", "TN", "FN"):
        counts.add_column(col, justify="right")
    for rr in rows:
        name = rr.rule + (" *" if rr.rule == cal.rule else "")
        m = rr.heldout_metrics or rr.fit_metrics
        if m is None:  # the rule found no threshold (its note says why)
            rates.add_row(name, "-", "-", "-", "-", "-")
            counts.add_row(name, "-", "-", "-", "-")
            continue
        rates.add_row(name, _fmt(rr.threshold), _fmt(m.auroc), _fmt(m.share_confident, True),
                      _fmt(m.precision_confident, True), _fmt(m.precision_uncertain, True))
        counts.add_row(name, str(m.tp), str(m.fp), str(m.tn), str(m.fn))
    console.print(rates)
    console.print(counts)
    console.print("* the rule in use. Confident = score below the threshold; TP = confident and right, "
                  "FP = confident and wrong, TN = uncertain and wrong, FN = uncertain and right.")
    if cal.guarantee:
        console.print(f"guarantee: {escape(cal.guarantee)}")
    verdict = side.get("verdict_heldout")
    if verdict is not None:
        console.print(
            f"the verdict on held-out answers (score {escape(side.get('score_label', ''))}, rule {cal.rule}"
            + (f", novelty gate at the {cal.novelty_gate.quantile:g} quantile" if cal.novelty_gate else "")
            + (", per-family thresholds" if cal.groups else "")
            + f"): {_fmt(verdict['share_confident'], True)} confident, precision "
            f"{_fmt(verdict['precision_confident'], True)} ({verdict['n_wrong_confident']} wrong of "
            f"{verdict['n_confident']}); {_fmt(verdict['share_gated'], True)} gated as novel")
    if cal.groups is not None:
        fams = side.get("families") or []
        own = [f"{escape(g)} {_fmt(t)}" + (f" (held-out precision {_fmt(m.precision_confident, True)})"
                                          if (m := cal.groups.heldout_metrics.get(g)) is not None else "")
               for g, t in cal.groups.thresholds.items()]
        fallback = [escape(f) for f in fams if f not in cal.groups.thresholds]
        console.print(f"per-{cal.groups.key} thresholds: {', '.join(own) or 'none'}; the global threshold for: "
                      f"{', '.join(fallback) or 'none'} (fewer than {cal.groups.min_per_class} right or wrong "
                      "fitting answers)")
    for note in cal.notes:
        console.print(f"[yellow]note[/yellow] {escape(note)}")
    for rr in rows[1:]:  # the rule in use has its note in cal.notes; the alternatives keep theirs apart
        if rr.note:
            console.print(f"[yellow]note[/yellow] (rule not in use) {escape(rr.note)}")


def _cmd_view(args, console: Console) -> int:
    from guardrail.traces.viewer import view_trace

    return view_trace(args.trace, png_dir=args.png, console=console, all_tokens=args.all_tokens, html=args.html)


def _cmd_policy_check(args, console: Console) -> int:
    from policies import cli_check

    return cli_check(args.file, console=console, import_handlers=args.import_handlers)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``guardrail`` (also used by the docs)."""
    ap = argparse.ArgumentParser(prog="guardrail", description="fastrm-guard: where a VLM looked, and whether to trust it")
    sub = ap.add_subparsers(dest="command", required=True)

    def model_args(p, need_calibration=True):
        p.add_argument("--model", default=DEFAULT_PRESET, help="load_vlm name or folder (default: the shipped reference)")
        p.add_argument("--proxy", default=None, help="FastRM proxy folder (default: the shipped one for 'reference')")
        if need_calibration:
            p.add_argument("--calibration", default=None, help="calibration JSON (default: the shipped one)")
        p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: as saved)")
        p.add_argument("--device", default=None, help="cpu | cuda | cuda:1 ... (default: cpu)")
        verbose_arg(p)

    def verbose_arg(p):
        p.add_argument("-v", "--verbose", action="store_true",
                       help="also show the libraries' progress bars (transformers' 'Loading weights')")

    p = sub.add_parser("demo", help="the offline demo on the shipped reference model")
    p.add_argument("--out", default="guardrail-demo", help="folder for overlays and the trace")
    p.add_argument("--model", default=DEFAULT_PRESET)
    p.add_argument("--proxy", default=None)
    p.add_argument("--calibration", default=None)
    p.add_argument("--policy", default="default")
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--pool", type=int, default=24, help="scenes answered (the panels show a few of them)")
    p.add_argument("--pope-scenes", type=int, default=24,
                   help="scenes asked POPE existence questions (present and adversarially chosen absent objects; 0: none)")
    p.add_argument("--pope-seed", type=int, default=2029, help="world seed of the POPE scenes")
    verbose_arg(p)
    telemetry_args(p)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("run", help="one guarded call")
    model_args(p)
    p.add_argument("--policy", default="default", help="bundled name or YAML file")
    p.add_argument("--image", required=True)
    p.add_argument("--question", required=True)
    p.add_argument("--tag", action="append", help="request tag (repeatable), for policy rules")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--trace", default=None, help="append the spans to this JSONL file")
    telemetry_args(p)
    p.add_argument("--capture-content", action="store_true", default=None, help="record question/answer text in spans")
    p.add_argument("--json", action="store_true", help="print the GuardResult as JSON")
    p.add_argument("--maps", action="store_true", help="with --json, include the maps")
    p.add_argument("--png", default=None, help="write the answer's map over the image here")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("serve", help="a guarded OpenAI-compatible chat endpoint (the serve extra)")
    model_args(p)
    p.add_argument("--policy", default="default", help="bundled name or YAML file")
    from guardrail.cli.serve import add_serve_arguments

    add_serve_arguments(p)
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("calibrate", help="fit a confidence threshold on a labelled JSONL set")
    model_args(p, need_calibration=False)
    p.add_argument("--data", default=None, help="JSONL: {id, image, question, answers, ...} per line")
    p.add_argument("--out", required=True, help="calibration JSON to write")
    p.add_argument("--score", default="map_entropy",
                   help="the score the threshold applies to: map_entropy, map_spread, token_nll, predictive_entropy, "
                        "low_margin, novelty, fused (see docs/calibration.md)")
    p.add_argument("--aggregation", default=None, choices=["mean", "max", "first"],
                   help="over content tokens (default: the score's own; first is for map_entropy only)")
    p.add_argument("--rule", default="paper_midpoint", choices=["paper_midpoint", "density_crossing", "guaranteed_precision"])
    p.add_argument("--target-precision", type=float, default=0.98,
                   help="guaranteed_precision: the precision of confident answers to certify")
    p.add_argument("--delta", type=float, default=0.1,
                   help="guaranteed_precision: the probability that the guarantee fails")
    p.add_argument("--novelty-quantile", type=float, default=None,
                   help="gate inputs whose novelty is above this quantile of the fitting inputs' (e.g. 0.995)")
    p.add_argument("--group-by", default=None, choices=["family"], help="per-family thresholds (global fallback)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="paper: the FastRM paper's configuration (map_entropy mean, paper_midpoint, no gate)")
    p.add_argument("--fit-fraction", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--prompt-suffix", default=None, help="appended to every question (use the proxy's)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N records")
    p.add_argument("--strict", action="store_true", help="reject the file on any malformed line")
    p.add_argument("--plot", default=None, help="draw the chosen score's KDEs and threshold to this PNG")
    p.add_argument("--scores-out", default=None, help="also write per-record scores (JSONL)")
    p.add_argument("--signals-out", default=None, help="also write every answer's signals (JSONL), for --from-signals")
    p.add_argument("--from-signals", default=None, help="fit from stored signals instead of running the model")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("view", help="render the guarded calls of a JSONL trace")
    p.add_argument("trace")
    p.add_argument("--png", default=None, help="write an explained figure (PNG) per token map into this folder")
    p.add_argument("--html", default=None, help="write a self-contained HTML report of the trace to this file")
    p.add_argument("--all-tokens", action="store_true", help="also show non-content tokens")
    p.set_defaults(func=_cmd_view)

    p = sub.add_parser("policy", help="policy tools")
    psub = p.add_subparsers(dest="policy_command", required=True)
    c = psub.add_parser("check", help="validate and explain a policy file or bundled name")
    c.add_argument("file")
    c.add_argument("--import-handlers", action="store_true",
                   help="also import each escalation handler (runs its module's top-level code)")
    c.set_defaults(func=_cmd_policy_check)
    return ap


def main(argv: list[str] | None = None, *, console: Console | None = None) -> int:
    """Entry point of ``guardrail``; returns the exit code."""
    args = build_parser().parse_args(argv)
    console = console or Console()
    if hasattr(args, "model"):  # a command that loads a model
        from fastrm_core.verbosity import quiet_model_loading

        quiet_model_loading(args.model, verbose=args.verbose)
    try:
        return int(args.func(args, console) or 0)
    except (GuardrailError, OSError) as exc:  # bad input, bad file, bad argument: one line, exit 2
        message = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
        console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
