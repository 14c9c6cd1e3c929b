"""The ``guardrail`` command: demo, run, serve, calibrate, view, policy check.

Each command parses its arguments, calls a library function and prints with rich.
Exit codes: 0 success, 1 a check failed / nothing to show, 2 bad input (GuardrailError).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich import box
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


def _num(value: float | None, digits: int = 4) -> str:
    return "none" if value is None else f"{value:.{digits}g}"


def _check_run_inputs(args, console: Console):
    """Everything ``guardrail run`` can check without the model, checked before the model loads
    (seconds under load): the image, the policy, the calibration, the proxy folder, the numbers.

    Returns ``(policy, calibration)`` loaded, or an exit code (2) after printing the problems."""
    from calibration import Calibration
    from fastrm_common.errors import PolicyError
    from fastrm_common.images import load_image
    from policies import load_policy

    from guardrail.limits import Limits, check_question, check_tags

    limits = Limits()
    # InputError: "image not found: ...", "unreadable image ...", beyond the Guard's pixel or aspect limits
    load_image(args.image, max_pixels=limits.max_image_pixels, max_aspect_ratio=limits.max_image_aspect_ratio)
    check_question(args.question, limits)
    check_tags(args.tag or ())
    if not 1 <= args.max_new_tokens <= limits.max_new_tokens:
        raise GuardrailError(f"--max-new-tokens must be between 1 and {limits.max_new_tokens}, got {args.max_new_tokens}")
    if args.proxy is not None and not Path(args.proxy).is_dir():
        raise GuardrailError(f"proxy folder not found: {args.proxy!r}")
    if preset_path(args.model, "proxy") is None and (args.proxy is None or args.calibration is None):
        raise GuardrailError(f"--proxy and --calibration are required for a model other than a preset "
                             f"(such as the shipped {DEFAULT_PRESET!r})")
    try:
        policy = load_policy(args.policy)
    except PolicyError as exc:  # one problem per line, as `guardrail policy check` prints them
        console.print(f"[red]error:[/red] invalid policy {escape(str(args.policy))}", soft_wrap=True)
        for line in str(exc).splitlines():
            if line.strip():
                console.print(escape(line.strip()), soft_wrap=True)
        return 2
    calibration = None if args.calibration is None else Calibration.load(args.calibration)
    return policy, calibration


def _cmd_run(args, console: Console) -> int:
    checked = _check_run_inputs(args, console)
    if isinstance(checked, int):
        return checked
    policy, calibration = checked

    from guardrail.guard import Guard
    from guardrail.traces.render import explained_figure, heatmap_text, view_box

    provider, meters = telemetry_from_args(args, jsonl_path=args.trace)
    guard = Guard.from_pretrained(args.model, proxy=args.proxy, calibration=calibration or args.calibration,
                                  policy=policy, tracer_provider=provider, meter_provider=meters,
                                  capture_content=args.capture_content, dtype=args.dtype, device=args.device,
                                  visual_contrast=True if args.visual_contrast else None)
    result = guard.generate(args.image, args.question, tags=args.tag or (), max_new_tokens=args.max_new_tokens)
    provider.shutdown()
    meters.shutdown()
    if args.json:
        console.print_json(result.model_dump_json(exclude={"maps"} if not args.maps else None))
        return 0
    table = Table.grid(padding=(0, 2))
    table.add_row("answer", escape(repr(result.answer)) if result.answer else
                  "(empty: the model produced no text" + (", only its end-of-sequence token)"
                                                          if result.finish_reason == "stop" else ")"))
    threshold = ("none: this calibration marks no answer confident" if result.threshold is None and
                 guard.calibration is not None else _num(result.threshold))
    table.add_row("verdict", escape(f"{result.verdict} (score {_num(result.score)} vs threshold {threshold})"))
    if result.verdict_reason:
        table.add_row("why", escape(result.verdict_reason))
    table.add_row("action", escape(f"{result.action} [rule {result.rule}] -> {result.text!r}"))
    table.add_row("timings", f"model {result.timings.model_s:.3f} s, guard {result.timings.guard_s:.3f} s")
    if result.error:
        table.add_row("guard error", escape(result.error))
    for warning in result.warnings:
        table.add_row("[yellow]warning[/yellow]", escape(warning))
    if len(result.claims) > 1:  # a long answer: each claim's verdict
        for c in result.claims:
            colour = {"confident": "green", "uncertain": "red"}.get(c.verdict or "", "yellow")
            table.add_row("claim" if c.index == 0 else "", f"[{colour}]{c.verdict or 'unscored'}[/{colour}] "
                          f"{escape(repr(c.text))} (score {_num(c.score)}){' removed' if c.redacted else ''}")
    console.print(table)
    if result.answer_map is not None:
        console.print(heatmap_text(result.answer_map))
        if args.png:
            from guardrail.guard import load_image

            img = load_image(args.image)
            path = explained_figure(args.png, img, result.answer_map, box=view_box(guard.processor, *img.size),
                                    title=f"Q: {args.question}   A: {result.answer or '(empty answer)'}",
                                    lines=(f"verdict {result.verdict} (score {_num(result.score, 3)} vs threshold "
                                           f"{_num(result.threshold, 3)}); action {result.action} [rule {result.rule}]",
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
    "paper": {"score": "map_entropy", "aggregation": "mean", "rule": "paper_midpoint", "novelty_quantile": 0.0},
    # what ships (the Makefile's CALIBRATION_FLAGS, shapesvqa/assets/reference-calibration.json): the default
    "shipped": {"score": "low_margin", "aggregation": "max", "rule": "guaranteed_precision", "target_precision": 0.98,
                "delta": 0.1, "novelty_quantile": 0.995},
}
#: the preset whose values are calibrate's defaults
DEFAULT_CALIBRATE_PRESET = "shipped"


def _aggregation(args) -> str | None:
    """--aggregation, or the score's own when not given (None for scores without one)."""
    if args.aggregation is not None or args.score in ("novelty", "fused"):
        return args.aggregation
    from calibration import get_score

    try:
        return get_score(args.score).params.get("aggregation")
    except GuardrailError:  # an unknown score: calibrate_scores says so
        return None


def _recipe(args) -> str:
    """The score, rule and gate a calibrate run uses, in words."""
    agg = f"({_aggregation(args)})" if _aggregation(args) else ""
    rule = args.rule + (f" (target precision {args.target_precision:g}, delta {args.delta:g})"
                        if args.rule == "guaranteed_precision" else "")
    gate = (f"novelty gate at the {args.novelty_quantile:g} quantile" if args.novelty_quantile
            else "no novelty gate")
    return f"score {args.score}{agg}, rule {rule}, {gate}"


def _is_default_recipe(args) -> bool:
    return all((_aggregation(args) if k == "aggregation" else getattr(args, k)) == v
               for k, v in PRESETS[DEFAULT_CALIBRATE_PRESET].items())


def _print_no_threshold(console: Console, cal, side: dict, args) -> None:
    """Loudly: a calibration without threshold makes every guarded answer uncertain; say what it would take."""
    from calibration.guarantee import STARTS, min_confident_for

    console.print("[bold red]WARNING: this calibration marks NO answer confident[/bold red] (threshold: null): "
                  "every answer the guard sees will be 'uncertain'.", soft_wrap=True)
    if cal.rule == "guaranteed_precision" and cal.target_precision is not None and cal.delta is not None:
        n_min = min_confident_for(cal.target_precision, cal.delta / STARTS)
        fraction = float(cal.metadata.get("fit_fraction", args.fit_fraction) or 0.5)
        accuracy = side.get("accuracy_heldout") or 1.0
        need = int(-(-n_min // (fraction * max(accuracy, 1e-3))))
        n_total = side["n_fit"] + side["n_heldout"]
        console.print(
            f"Certifying precision {cal.target_precision:g} at delta {cal.delta:g} needs at least {n_min} fitting "
            f"answers below the threshold with no wrong one among them; with a {fraction:g} fitting split and "
            f"{100 * accuracy:.0f}% of answers right, that is roughly {need} labelled answers or more (more if wrong "
            f"answers score as low as right ones); this run had {n_total}. Label more data, or lower "
            "--target-precision, or raise --delta.", soft_wrap=True)


def _score_params(args) -> dict:
    params = {} if args.aggregation is None else {"aggregation": args.aggregation}
    grounding, contrast = getattr(args, "with_grounding", False), getattr(args, "with_visual_contrast", False)
    if grounding or contrast:  # fused over the token scores and the evidence score(s)
        if args.score != "fused":
            raise GuardrailError(f"--with-{'grounding' if grounding else 'visual-contrast'} applies to --score fused: "
                                 "add --score fused")
        from calibration.answer_scores import CONTRAST_BASES, EVIDENCE_BASES

        params["bases"] = [dict(b) for b in (CONTRAST_BASES if contrast else EVIDENCE_BASES)]
    return params


def _cmd_calibrate(args, console: Console) -> int:
    from calibration import plot_calibration

    from guardrail.calibrate import calibrate_scores, read_signals, write_scores, write_signals

    gate_defaulted = args.novelty_quantile is None
    if gate_defaulted:
        args.novelty_quantile = PRESETS[DEFAULT_CALIBRATE_PRESET]["novelty_quantile"]
    if args.preset is not None:
        gate_defaulted = False
        for key, value in PRESETS[args.preset].items():
            setattr(args, key, value)
    score_params = _score_params(args)  # flag combinations are refused before any model work
    from calibration import lookup_score

    if "imageless_logprob" in lookup_score(args.score).signals_needed(**score_params):
        args.visual_contrast = True  # a score on the image-free pass: run it
    if args.from_signals:
        rows, meta = read_signals(args.from_signals)
        identity = {k: meta.get(k) for k in ("model_id", "model_hash", "proxy_id", "proxy_hash", "dataset_hash")}
        if args.visual_contrast and not any(r.signals.imageless_logprob is not None for r in rows):
            raise GuardrailError(f"{args.from_signals} holds no image-free pass (signal imageless_logprob): record "
                                 "the signals again with --data ... --visual-contrast --signals-out")
    else:
        if not args.data:
            raise GuardrailError("--data is required (or --from-signals with stored signals)")
        rows, identity = _answer_records(args, console)
        if args.signals_out:
            write_signals(args.signals_out, rows, meta={**identity, **({"claims": args.claims} if args.claims else {})})
            console.print(f"signals: {args.signals_out}")
    if args.scores_out:
        write_scores(Path(args.scores_out), rows)
    if gate_defaulted and args.novelty_quantile and not all(r.signals.features is not None for r in rows):
        console.print("[yellow]note[/yellow] no novelty gate: these answers carry no pooled hidden states "
                      "(features), which the default gate needs", soft_wrap=True)
        args.novelty_quantile = 0.0
    claims = args.claims or (meta.get("claims") if args.from_signals else None)
    if claims and args.novelty_quantile:
        console.print("[yellow]note[/yellow] the novelty gate is on for claims: a claim's input is its whole answer's, "
                      "so a gate fitted per claim can mark many claims novel (docs/calibration.md, 5b: the shipped "
                      "claim calibration has none); --novelty-quantile 0 turns it off", soft_wrap=True)
    default = " (the default: the shipped recipe; --preset paper for the FastRM paper's)" if _is_default_recipe(args) else ""
    console.print(f"recipe: {_recipe(args)}{default}", soft_wrap=True)
    cal, side = calibrate_scores(
        rows, score=args.score, score_params=score_params, rule=args.rule, fit_fraction=args.fit_fraction,
        seed=args.seed, target_precision=args.target_precision, delta=args.delta,
        novelty_quantile=args.novelty_quantile, group_by=args.group_by, **identity,
    )
    side["unit"] = "claims" if claims else "answers"
    if claims:  # a claim-level calibration: the Guard judges each claim with it
        cal = cal.model_copy(update={"level": "claim", "splitter": claims})
        console.print(f"claim level: {len(rows)} labelled claims, cut with the {claims!r} splitter", soft_wrap=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cal.save(args.out)
    _print_score_table(console, side)
    _print_calibration(console, cal, side)
    if cal.threshold is None:
        _print_no_threshold(console, cal, side, args)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot_calibration(cal, side["heldout_scores"], side["heldout_correct"], args.plot,
                         title=f"{side['score_label']}, {cal.rule}\nhistograms: held-out answers (n={side['n_heldout']}); "
                               f"KDE curves: fitting answers (n={side['n_fit']})")
        console.print(f"plot: {args.plot} (histograms: the held-out answers)")
        if side.get("score_table"):
            from calibration.plot import plot_risk_coverage

            rc = Path(args.plot).with_name(Path(args.plot).stem + "-risk-coverage" + Path(args.plot).suffix)
            plot_risk_coverage({r["label"]: (r["heldout_values"], r["heldout_wrong"]) for r in side["score_table"]}, rc)
            console.print(f"plot: {rc} (risk-coverage of every score, held-out answers)")
    console.print(f"calibration written to {args.out}"
                  + (" [bold red](it marks no answer confident: see the warning above)[/bold red]"
                     if cal.threshold is None else ""), soft_wrap=True)
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
                                      progress=lambda n: progress.advance(task, n), claims=args.claims,
                                      labeler=args.labeler,
                                      visual_contrast=args.visual_contrast or args.with_visual_contrast)
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
    labels = [row["label"] + (" *" if row["label"] == side.get("score_label") else "") for row in table_rows]
    # Families in as many tables as it takes for each to fit the console: a cut header ("attribu…") says nothing.
    room = console.width - max(len(label) for label in labels) - 2 - 7 - 7  # the score column, "all", "PRR"
    chunks: list[list[str]] = [[]]
    for fam in fams:
        if chunks[-1] and sum(max(len(f), 5) + 2 for f in chunks[-1]) + max(len(fam), 5) + 2 > room:
            chunks.append([])
        chunks[-1].append(fam)
    title = f"held-out AUROC of each score ({side['n_heldout']} {side.get('unit', 'answers')}; 1 = perfect, 0.5 = chance)"
    for k, chunk in enumerate(chunks):
        table = Table(title=title if k == 0 else None, box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("score", no_wrap=True)
        table.add_column("all", justify="right", no_wrap=True)
        if k == 0:
            table.add_column("PRR", justify="right", no_wrap=True)
        for fam in chunk:
            table.add_column(fam, justify="right", no_wrap=True, min_width=len(fam))
        for label, row in zip(labels, table_rows):
            table.add_row(label, _fmt(row["auroc"]), *([_fmt(row.get("prr"))] if k == 0 else []),
                          *[_fmt(row["families"].get(f)) for f in chunk])
        console.print(table)
    console.print("* the score in use. Fitted scores (novelty, state_probe, fused) are fitted on the fitting answers "
                  "only. PRR: lm-polygraph's prediction-rejection ratio (1 = oracle, 0 = chance).")
    if side.get("ece_heldout") is not None:
        console.print(f"expected calibration error of the verdict's confidence (P(right | score), fitted on the "
                      f"fitting answers): {side['ece_heldout']:.3f} on the held-out answers")


def _fmt(v, pct=False):
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _print_calibration(console: Console, cal, side: dict) -> None:
    """The rules side by side, readable at 80 columns: the rates in one table, the counts in another."""
    rows = cal.rules_table()
    title = (f"rules on {side.get('score_label', cal.score.name)}: held-out figures ({side['n_heldout']} "
             f"{side.get('unit', 'answers')}; "
             f"fitted on {side['n_fit']}; accuracy {_fmt(side['accuracy_heldout'], True)})")
    # no vertical rules (box.SIMPLE_HEAD): 80 columns hold the longest rule name and every header whole
    rates = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    rates.add_column("rule", no_wrap=True)
    for col in ("threshold", "AUROC", "share\nconfident", "precision\nconfident", "precision\nuncertain"):
        rates.add_column(col, justify="right", no_wrap=True)
    counts = Table(title="counts on the same answers", box=box.SIMPLE_HEAD, pad_edge=False)
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
            p.add_argument("--visual-contrast", action="store_true",
                           help="also run the image-free pass after each generation and report the visual_contrast "
                                "score (about one prefill more; on by itself when a calibration uses it)")
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
    p.add_argument("--max-new-tokens", type=int, default=48, help="longest answer in tokens (default 48: room for a description)")
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
    shipped = PRESETS[DEFAULT_CALIBRATE_PRESET]
    p.description = (f"The defaults are the shipped recipe: score {shipped['score']}({shipped['aggregation']}), rule "
                     f"{shipped['rule']} (target precision {shipped['target_precision']:g}, delta {shipped['delta']:g}), "
                     f"novelty gate at the {shipped['novelty_quantile']:g} quantile. --preset paper: the FastRM "
                     "paper's (map_entropy mean, paper_midpoint, no gate).")
    p.add_argument("--score", default=shipped["score"],
                   help="the score the threshold applies to: map_entropy, map_spread, token_nll, predictive_entropy, "
                        "low_margin, grounding, visual_contrast, state_probe, novelty, fused, or one you registered "
                        f"(see docs/calibration.md; default: {shipped['score']})")
    p.add_argument("--aggregation", default=None, choices=["mean", "max", "first"],
                   help="over content tokens (default: the score's own: max for low_margin, mean for map_entropy; "
                        "first is for map_entropy only)")
    p.add_argument("--rule", default=shipped["rule"], choices=["paper_midpoint", "density_crossing", "guaranteed_precision"],
                   help=f"the threshold rule (default: {shipped['rule']})")
    p.add_argument("--target-precision", type=float, default=shipped["target_precision"],
                   help=f"guaranteed_precision: the precision of confident answers to certify (default: {shipped['target_precision']:g})")
    p.add_argument("--delta", type=float, default=shipped["delta"],
                   help=f"guaranteed_precision: the probability that the guarantee fails (default: {shipped['delta']:g})")
    p.add_argument("--novelty-quantile", type=float, default=None,
                   help="gate inputs whose novelty is at or above this quantile of the fitting inputs' (default: "
                        f"{shipped['novelty_quantile']:g}, left out with a note when the answers have no features; "
                        "0: no gate)")
    p.add_argument("--group-by", default=None, choices=["family"], help="per-family thresholds (global fallback)")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="paper: the FastRM paper's configuration (map_entropy mean, paper_midpoint, no gate); "
                        "shipped: the defaults. A preset overrides --score, --aggregation, --rule and the gate")
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
    p.add_argument("--with-grounding", action="store_true",
                   help="with --score fused: fuse the evidence score grounding(max) with the token scores")
    p.add_argument("--visual-contrast", action="store_true",
                   help="also run the image-free pass per answer (one more forward, the image tokens replaced by "
                        "their mean) so that the table compares the visual_contrast scores (implied by --score "
                        "visual_contrast). A Guard given a calibration whose score needs the pass runs it itself")
    p.add_argument("--with-visual-contrast", action="store_true",
                   help="with --score fused: fuse grounding(max) and visual_contrast(mean) with the token scores, "
                        "i.e. fused(+grounding, visual_contrast) (implies --visual-contrast)")
    p.add_argument("--claims", default=None, metavar="SPLITTER",
                   help="fit a claim-level calibration: cut each answer into claims with SPLITTER (sentences, "
                        "clauses, objects, or a world's, e.g. shapes) and judge each claim (docs/calibration.md, Claims)")
    p.add_argument("--labeler", default=None,
                   help="with --claims: how a claim is labelled from its record (default: the splitter's own labeler, "
                        "else objects: a claim naming an object absent from the record's 'objects' is wrong)")
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
