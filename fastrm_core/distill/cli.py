"""``fastrm distill build | train | eval``: parse, call the library function, save, print with rich.

    fastrm distill build --data shapes-train/data.jsonl --out runs/ds --max-new-tokens 4
    fastrm distill train --data runs/ds --out runs/proxy --steps 3500
    fastrm distill eval  --data shapes-test/data.jsonl --out runs/report.json --proxy runs/proxy --n 200

``--model`` defaults to the shipped ShapesVQA reference model and (for ``eval``) ``--proxy``
to its shipped proxy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fastrm_common.errors import InputError
from fastrm_common.presets import DEFAULT_PRESET, preset_path

__all__ = ["add_distill_parser", "default_model", "default_proxy"]


# --------------------------------------------------------------------------------------
# defaults: the default preset's artifacts (fastrm_common.presets; "reference" = the shipped ShapesVQA model)


def _default(artifact: str, flag: str) -> str:
    try:
        path = preset_path(DEFAULT_PRESET, artifact)
    except FileNotFoundError as exc:
        raise InputError(f"no {flag} given and the {DEFAULT_PRESET} {artifact} is not shipped: {exc}; pass {flag}") from exc
    if path is None:
        raise InputError(f"no {flag} given and no {DEFAULT_PRESET!r} preset with a {artifact} is installed; pass {flag}")
    return str(path)


def default_model() -> str:
    """The default preset's model folder, or an :class:`InputError` saying to pass ``--model``."""
    return _default("model", "--model")


def default_proxy() -> str:
    """The default preset's proxy folder, or an :class:`InputError` saying to pass ``--proxy``."""
    return _default("proxy", "--proxy")


# --------------------------------------------------------------------------------------
# parsers


def _scale_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="local (default) or ray actors")
    p.add_argument("--workers", type=int, default=1, help="ray actors, each holding one model copy (default 1)")
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster ('auto'); default: start a local one")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="VLM folder or hub id (default: the shipped ShapesVQA reference model)")
    p.add_argument("--dtype", default=None, help="float32 | float16 | bfloat16 (default: the checkpoint's)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cpu)")
    p.add_argument("--max-new-tokens", type=int, default=10, help="greedy generation length (default 10)")
    p.add_argument("--prompt-suffix", default=None,
                   help="appended to each question (the paper: 'Answer the question using up to two words.')")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show the libraries' progress bars (transformers' 'Loading weights')")


def add_distill_parser(sub) -> None:
    """Register ``distill build|train|eval`` on an argparse sub-parsers object."""
    distill = sub.add_parser("distill", help="build datasets, train and evaluate FastRM proxies")
    dsub = distill.add_subparsers(dest="distill_command", metavar="{build,train,eval}")
    dsub.required = True

    b = dsub.add_parser("build", help="generate answers and record (hidden state, gradient map) pairs")
    b.add_argument("--data", required=True, type=Path, help="VQA JSONL file (ShapesVQA export format)")
    b.add_argument("--out", required=True, type=Path, help="dataset folder (resumes if it holds a manifest)")
    _model_args(b)
    b.add_argument("--records-per-shard", type=int, default=64)
    b.add_argument("--label-threshold", type=float, default=0.3, help="recorded for the trainer (default 0.3)")
    b.add_argument("--states-dtype", default="auto", choices=("auto", "float32", "float16", "bfloat16"))
    b.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    _scale_args(b)
    b.set_defaults(func=_build)

    t = dsub.add_parser("train", help="fit a FastRM proxy on a dataset folder")
    t.add_argument("--data", required=True, type=Path, help="dataset folder written by `fastrm distill build`")
    t.add_argument("--out", required=True, type=Path, help="proxy folder to write")
    t.add_argument("--lr", type=float, default=2e-5)
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--steps", type=int, default=3500)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.1)
    t.add_argument("--eval-every", type=int, default=250)
    t.add_argument("--head-dim", type=int, default=None, help="proxy head size (default: the hidden size)")
    t.add_argument("--label-threshold", type=float, default=None, help="default: the dataset's")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--pos-weight", type=float, default=1.0, help="BCE weight of relevant patches (default 1)")
    t.add_argument("--f1-weight", type=float, default=0.0,
                   help="add this weight times (1 - soft F1 over the batch's patches) to the BCE (default 0: BCE only)")
    t.add_argument("--record-balance", type=float, default=0.0, metavar="ALPHA",
                   help="draw training tokens with weight n^-ALPHA, n the tokens of their record (0: uniform, the "
                        "default; 1: every record alike, so long answers do not drown short ones)")
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant learning rate (default, the paper's) or a cosine decay to 0 over the run")
    t.add_argument("--select", choices=("loss", "f1"), default="loss",
                   help="keep the checkpoint of lowest validation loss (default) or of highest validation F1 at 0.5")
    t.add_argument("--tokens", choices=("content", "all"), default="content",
                   help="distil the content tokens' maps (default: the ones the Guard scores) or every token's")
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-memory-gb", type=float, default=4.0, help="load datasets under this size into memory")
    t.set_defaults(func=_train)

    e = dsub.add_parser("eval", help="proxy vs gradient baseline: F1, perturbation AUC, pointing, correlation")
    e.add_argument("--data", required=True, type=Path, help="VQA JSONL file (evidence_masks enable the pointing game)")
    e.add_argument("--out", required=True, type=Path, help="JSON report to write")
    _model_args(e)
    e.add_argument("--proxy", default=None, help="proxy folder (default: the shipped reference proxy)")
    e.add_argument("--n", type=int, default=None, help="evaluate the first N records (default all)")
    e.add_argument("--label-threshold", type=float, default=None, help="default: the proxy's")
    e.add_argument("--fill", choices=("zero", "mean"), default="zero", help="value of removed patch embeddings")
    e.add_argument("--token", choices=("first", "mean"), default="first",
                   help="the map that ranks patches: first answer token's, or the mean over the answer")
    e.add_argument("--gradcam-layer", type=int, default=None, help="decoder layer for Grad-CAM (default: the middle)")
    e.add_argument("--random-seeds", type=int, default=5)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--bootstrap", type=int, default=1000,
                   help="resamples of records behind each F1's 95%% confidence interval (0: none)")
    e.add_argument("--no-perturbation", action="store_true", help="skip the perturbation curves (fast)")
    e.add_argument("--perturb-batch-size", type=int, default=32)
    _scale_args(e)
    e.set_defaults(func=_eval)


# --------------------------------------------------------------------------------------
# commands


def _console():
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)


def _build(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from .dataset import BuildSettings
    from .runner import build_dataset

    console = _console()
    model = args.model or default_model()
    settings = BuildSettings(
        max_new_tokens=args.max_new_tokens,
        prompt_suffix=args.prompt_suffix,
        records_per_shard=args.records_per_shard,
        label_threshold=args.label_threshold,
        states_dtype=args.states_dtype,
    )
    columns = (TextColumn("[bold]build"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[tps]} tok/s"),
               TimeElapsedColumn(), TimeRemainingColumn())
    state = {"tokens": 0, "t0": time.perf_counter()}
    start = time.perf_counter()
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("build", total=None, tps="-")

        def on_start(todo: int, done: int) -> None:
            progress.update(task, total=todo + done, completed=done)
            state["t0"] = time.perf_counter()

        def on_record(record_id: str, n_tokens: int) -> None:
            state["tokens"] += n_tokens
            rate = state["tokens"] / max(time.perf_counter() - state["t0"], 1e-9)
            progress.update(task, advance=1, tps=f"{rate:.1f}")

        manifest = build_dataset(
            args.data, args.out, model_name=model, settings=settings, dtype=args.dtype, device=args.device,
            backend=args.backend, workers=args.workers, ray_address=args.ray_address, overwrite=args.overwrite,
            on_record=on_record, on_start=on_start,
        )
    console.print(
        f"[green]dataset[/green] {args.out}: {manifest.n_records} records, {manifest.n_tokens} tokens, "
        f"{len(manifest.skipped)} skipped, {len(manifest.shards)} shards ({time.perf_counter() - start:.1f} s)"
    )
    for s in manifest.skipped[:10]:
        console.print(f"  skipped {s.id or f'line {s.line}'}: {s.reason}", markup=False, highlight=False)
    if len(manifest.skipped) > 10:
        console.print(f"  ... and {len(manifest.skipped) - 10} more (see manifest.json)")
    return 0


def _train(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rich.markup import escape

    from .trainer import TrainConfig, train_proxy

    console = _console()
    config = TrainConfig(
        lr=args.lr, batch_size=args.batch_size, steps=args.steps, seed=args.seed, val_fraction=args.val_fraction,
        eval_every=args.eval_every, head_dim=args.head_dim, label_threshold=args.label_threshold,
        weight_decay=args.weight_decay, pos_weight=args.pos_weight, f1_weight=args.f1_weight,
        record_balance=args.record_balance, tokens=args.tokens, lr_schedule=args.lr_schedule,
        select=args.select, device=args.device, max_memory_gb=args.max_memory_gb,
    )
    columns = (TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
               TextColumn("val {task.fields[val]}"), TimeElapsedColumn(), TimeRemainingColumn())
    start = time.perf_counter()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=config.steps, loss="-", val="-")

        def on_step(step: int, loss: float, evaluation: dict | None) -> None:
            fields = {"loss": f"{loss:.4f}"}
            if evaluation is not None:
                fields["val"] = f"{evaluation['val_loss']:.4f} (F1 {evaluation['val_f1']:.3f})"
            progress.update(task, advance=1, **fields)

        def on_split(split: dict, warnings: list[str]) -> None:
            val = (f"validation {split['n_val_records']} records, {split['n_val_tokens']} tokens"
                   if split["n_val_records"] else "no validation split (--val-fraction 0): the last step is kept")
            progress.console.print(f"split ({config.tokens} tokens): train {split['n_train_records']} records, "
                                   f"{split['n_train_tokens']} tokens; {val}", markup=False, highlight=False)
            for warning in warnings:
                progress.console.print(f"[yellow]warning[/yellow] {escape(warning)}")

        result = train_proxy(args.data, args.out, config, on_step=on_step, on_split=on_split)
    f1 = result.proxy.config.training["best_val_f1"]
    best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f} (F1 {f1:.3f})"
    console.print(f"[green]proxy[/green] {result.path}: best step {result.best_step} by {config.select}, val loss {best} "
                  f"({time.perf_counter() - start:.1f} s)")
    for warning in result.warnings:  # again under the result, where it is read
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    return 0


def _eval(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from rich.markup import escape

    from .evaluate import EvalConfig
    from .runner import evaluate_proxy

    console = _console()
    model = args.model or default_model()
    proxy = args.proxy or default_proxy()
    config = EvalConfig(
        max_new_tokens=args.max_new_tokens, prompt_suffix=args.prompt_suffix, label_threshold=args.label_threshold,
        fill=args.fill, token=args.token, gradcam_layer=args.gradcam_layer, random_seeds=args.random_seeds,
        seed=args.seed, perturbation=not args.no_perturbation, perturb_batch_size=args.perturb_batch_size,
        bootstrap=args.bootstrap,
    )
    loaded = {}
    if args.backend == "local":  # refuse a proxy that does not fit before the progress bar and the data
        from fastrm_core.loading import load_vlm
        from fastrm_core.proxy import FastRMProxy

        from .evaluate import check_proxy_fits

        vlm, processor = load_vlm(model, dtype=args.dtype, device=args.device)
        loaded = {"model": vlm, "processor": processor,
                  "proxy": FastRMProxy.from_pretrained(proxy, device=next(vlm.parameters()).device)}
        check_proxy_fits(loaded["proxy"], vlm, model)
    columns = (TextColumn("[bold]eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("eval", total=None)
        report = evaluate_proxy(
            args.data, **loaded, model_name=model, proxy_path=proxy, config=config, n=args.n, dtype=args.dtype,
            device=args.device, backend=args.backend, workers=args.workers, ray_address=args.ray_address,
            on_start=lambda total: progress.update(task, total=total),
            on_record=lambda _result: progress.advance(task),
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    from rich.console import Console

    for table in report_tables(report):
        Console().print(table)
    for warning in report.get("warnings", []):
        console.print(f"[yellow]warning[/yellow] {escape(warning)}")
    console.print(f"[green]report[/green] {args.out} ({report['n_records']} records, {report['n_skipped']} skipped, "
                  f"{report['seconds']:.1f} s)")
    return 0


def report_tables(report: dict) -> list:
    """Rich tables of an evaluation report: classification, perturbation AUC, pointing and correlation.

    They fit 80 columns. Every F1 stands beside the label positive rate and what constant maps
    score on the same labels (``all 1``: every patch relevant; ``all 0``: none).
    """
    from rich import box
    from rich.table import Table

    def fmt(x):
        return "-" if x is None else f"{x:.3f}"

    def ci(row):
        bounds = row.get("f1_ci")
        return "-" if not bounds else f"{bounds[0]:.3f}-{bounds[1]:.3f}"

    classification = report["classification"]
    level = classification.get("f1_ci")
    ci_name = f"{level['level']:.0%} CI" if level else None

    tables = []
    every = classification.get("all_tokens")
    rate = classification.get("positive_rate")
    title = (f"proxy vs binarised baseline (label threshold {classification['label_threshold']}; "
             f"{classification.get('n_tokens', '?')} content tokens")
    title += f"; {rate:.1%} of patches relevant)" if rate is not None else ")"
    cls = Table(title=title)
    for col in ("threshold", "accuracy", "precision", "recall", "F1"):
        cls.add_column(col, justify="right")
    if ci_name:
        cls.add_column(ci_name, justify="right")
    if every:
        cls.add_column(f"F1, all\n{every['n_tokens']} tokens", justify="right")
    for k, row in enumerate(classification["thresholds"]):
        cells = [f"{row['threshold']:.1f}", fmt(row["accuracy"]), fmt(row["precision"]), fmt(row["recall"]), fmt(row["f1"])]
        if ci_name:
            cells.append(ci(row))
        if every:
            cells.append(fmt(every["thresholds"][k]["f1"]))
        cls.add_row(*cells)
    baselines = classification.get("baselines")
    if baselines:  # what constant maps score on the same labels: the floor every F1 and accuracy is read against
        cls.add_section()
        for name, label in (("all_positive", "all 1"), ("all_negative", "all 0")):
            b = baselines[name]
            cells = [label, fmt(b["accuracy"]), fmt(b["precision"]), fmt(b["recall"]), fmt(b["f1"])]
            if ci_name:
                cells.append("")
            if every:
                cells.append(fmt(((every.get("baselines") or {}).get(name) or {}).get("f1")))
            cls.add_row(*cells)
        cls.caption = "all 1 / all 0: a map calling every patch relevant / none, on the same labels"
    tables.append(cls)
    if classification.get("by_family"):
        # eight columns in 80: a light box whose paddings collapse
        fam = Table(title="per question family (content tokens)", box=box.SIMPLE_HEAD, pad_edge=False,
                    collapse_padding=True)
        fam.add_column("family", no_wrap=True)
        for col in ("records", "tokens", "relevant", "F1 at\n0.5", *([ci_name] if ci_name else []), "all 1\nF1",
                    "best F1\n(thr.)"):
            fam.add_column(col, justify="right", no_wrap=True)
        for name, part in classification["by_family"].items():
            at_half = next((r for r in part["thresholds"] if abs(r["threshold"] - 0.5) < 1e-9), {})
            best = max(part["thresholds"], key=lambda r: r["f1"])
            share = part.get("positive_rate")
            fam.add_row(name, str(part["n_records"]), str(part["n_tokens"]), "-" if share is None else f"{share:.1%}",
                        fmt(at_half.get("f1")), *([ci(at_half)] if ci_name else []),
                        fmt(((part.get("baselines") or {}).get("all_positive") or {}).get("f1")),
                        f"{best['f1']:.3f} ({best['threshold']:.1f})")
        tables.append(fam)

    methods: list[str] = []
    for section in ("perturbation", "pointing"):
        part = report.get(section) or {}
        src = part.get("positive") or part.get("all") or {}
        methods += [m for m in src if m not in methods]
    if methods:
        summary = Table(title=f"methods on {report['n_records']} records (answer accuracy {fmt(report['answer_accuracy'])})")
        summary.add_column("method")
        for col in ("pos. AUC ↓", "neg. AUC ↑", "pointing ↑", "mask mass ↑", "chance"):
            summary.add_column(col, justify="right")
        pert = report.get("perturbation") or {}
        point = (report.get("pointing") or {}).get("all") or {}
        for m in methods:
            pos = (pert.get("positive") or {}).get(m, {}).get("auc")
            neg = (pert.get("negative") or {}).get(m, {}).get("auc")
            p = point.get(m, {})
            summary.add_row(m, fmt(pos), fmt(neg), fmt(p.get("hit")), fmt(p.get("mass")), fmt(p.get("chance")))
        tables.append(summary)
    corr = report["correlation"]
    extra = Table(title="proxy probabilities vs continuous baseline maps")
    for col in ("tokens", "Pearson", "Spearman", "n"):
        extra.add_column(col, justify="right")
    extra.add_row("content", fmt(corr["pearson"]), fmt(corr["spearman"]), str(corr["n_tokens"]))
    if corr.get("all_tokens"):
        a = corr["all_tokens"]
        extra.add_row("all", fmt(a["pearson"]), fmt(a["spearman"]), str(a["n_tokens"]))
    tables.append(extra)
    return tables
