"""``shapesvqa`` command line: ``export`` a split to disk, ``eval`` a model on a fresh split.

    shapesvqa export --n 1000 --seed 7 --out data/shapes-val
    shapesvqa export                     # 100 questions of world seed 0 into shapesvqa-data/
    shapesvqa export --n 1000 --seed 7 --world cooccur --out data/cooccur-val      # truthful labels
    shapesvqa export --n 300 --seed 8 --world cooccur --pope adversarial --out data/pope-adv
    shapesvqa eval --n 1000 --seed 12345 --out runs/eval.json                   # shipped model, gradient maps
    shapesvqa eval --model DIR --method proxy PROXY_DIR --n 500 --seed 1 --out proxy.json
    shapesvqa eval --pope --world cooccur --n 300 --seed 5 --out runs/pope.json  # --n counts scenes

``--world NAME`` picks a world of ``shapesvqa.world.WORLDS``; exported and evaluated labels are the
truth (``bias_rate`` 0) unless ``export --bias-rate Q`` asks for biased labels.

The train command is ``python -m shapesvqa.train`` (see :mod:`shapesvqa.train`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastrm_common.errors import GuardrailError

__all__ = ["main"]

# Defaults that make a first `shapesvqa export` / `shapesvqa eval` work without options.
EXPORT_N, EXPORT_SEED, EXPORT_OUT = 100, 0, "shapesvqa-data"
EVAL_OUT = "shapesvqa-eval.json"


def _export(args) -> int:
    from rich.console import Console

    from .export import export_examples
    from .world import generate

    cfg = _world(args, bias_rate=args.bias_rate)
    if args.describe_rate is not None:
        from dataclasses import replace as _replace

        cfg = _replace(cfg, describe_rate=args.describe_rate)
    if args.pope is not None:
        from .pope import pope_split
        from .world import world_options

        questions, _stats = pope_split(args.n, args.seed, cfg, k=args.pope_k, stats_scenes=args.stats_scenes,
                                       samplings=[args.pope], world=world_options(cfg) or None)
        examples = questions[args.pope]
        path = export_examples(examples, args.out, seed=args.seed)
        Console().print(f"wrote {len(examples)} POPE {args.pope} questions about {args.n} scenes to [bold]{path}[/bold]")
        return 0
    path = export_examples(generate(args.n, args.seed, cfg, family=args.family), args.out, seed=args.seed)
    Console().print(f"wrote {args.n} questions (world seed {args.seed}) to [bold]{path}[/bold]")
    return 0


def _model_world(model: str | None) -> str:
    """The world ``--model`` was trained on (the shipped model's for ``None``)."""
    from .assets import model_world, reference_world

    return reference_world() if model is None or model == "reference" else model_world(model)


def _world(args, bias_rate: float | None = None):
    """The world named by ``--world`` (default: the model's own world) with the CLI's object-count range;
    labels truthful unless ``bias_rate``. Sets ``args.world`` to the name used."""
    from .world import WORLDS, world_config

    if args.world is None:  # eval: the model's own world; export: the default world
        args.world = _model_world(args.model) if hasattr(args, "model") else "default"
        if args.world not in WORLDS:  # a model trained on a world this version does not know
            args.world = "default"
    cfg = world_config(args.world, n_objects=(args.min_objects, args.max_objects)).truthful()
    if bias_rate is not None:
        from dataclasses import replace

        cfg = replace(cfg, bias_rate=bias_rate)
    return cfg


def _table(report: dict, title: str, sections=("families", "n_objects")):
    from rich.table import Table

    t = Table(title=title, caption="pointing over correct answers; hit(wrong): over wrong answers")
    t.add_column("group", no_wrap=True)
    for col in ("n", "acc", "pts", "hit", "chance", "mass", "other", "hit(wrong)"):
        t.add_column(col, justify="right", no_wrap=True)

    def fmt(x):
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    for section in sections:
        for name, g in report[section].items():
            p = g["pointing"] or {}
            pw = g["pointing_incorrect"] or {}
            label = name if section != "n_objects" else f"{name} objects"
            t.add_row(label, str(g["n"]), fmt(g["accuracy"]), fmt(p.get("n")), fmt(p.get("hit")),
                      fmt(p.get("chance")), fmt(p.get("mass")), fmt(p.get("on_other")), fmt(pw.get("hit")))
        t.add_section()
    t.add_row("all", str(report["n"]), fmt(report["accuracy"]))
    return t


def _eval(args) -> int:
    import torch
    from rich.console import Console
    from rich.progress import Progress

    from .evaluate import evaluate
    from .world import generate

    console = Console(stderr=True)
    torch.set_num_threads(args.threads)
    method = args.method[0]
    if method not in ("gradient", "proxy", "none") or len(args.method) > 2 or (method != "proxy" and len(args.method) > 1):
        console.print(f"[red]--method expects 'gradient', 'none' or 'proxy [PATH]'; got {' '.join(args.method)}[/red]")
        return 2
    proxy_path = args.method[1] if len(args.method) == 2 else args.proxy
    model_dir = args.model
    if model_dir is None:
        from .assets import reference_model_path

        model_dir = reference_model_path()
    from fastrm_core.loading import load_vlm

    model, processor = load_vlm(model_dir, dtype=torch.float32)
    proxy = None
    if method == "proxy":
        if proxy_path is None:
            shipped = Path(__file__).parent / "assets" / "reference-proxy"
            if args.model is not None or not (shipped / "config.json").exists():
                console.print("[red]--method proxy needs a proxy folder: --method proxy PATH "
                              "(the shipped proxy is only the default for the shipped model)[/red]")
                return 2
            proxy_path = shipped
        try:
            from fastrm_core.proxy import FastRMProxy
        except ImportError as exc:
            console.print(f"[red]the proxy method needs fastrm_core.proxy: {exc}[/red]")
            return 2
        if not Path(proxy_path).exists():
            console.print(f"[red]no proxy at {proxy_path}[/red]")
            return 2
        proxy = FastRMProxy.from_pretrained(proxy_path)
    cfg = _world(args)
    if args.pope:
        return _eval_pope(args, model, processor, cfg, method, proxy, proxy_path, model_dir, console)
    if args.describe:
        return _eval_describe(args, model, processor, cfg, method, proxy, proxy_path, model_dir, console)
    from dataclasses import replace as _replace

    # short-answer questions only: descriptions are judged by --describe (CHAIR, Cover), not by their first word
    examples = list(generate(args.n, args.seed, _replace(cfg, describe_rate=0.0), family=args.family))
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"eval ({method})", total=len(examples))
        report = evaluate(model, processor, examples, method=method, proxy=proxy, batch_size=args.batch_size,
                          on_batch=lambda n: prog.update(task, completed=n))
    report = {"model": str(model_dir), "method": method, "proxy": str(proxy_path) if proxy_path else None,
              "world": args.world, "seed": args.seed, **report}
    rows = report.pop("rows")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.rows:
        args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sections = ("families", "kinds", "n_objects") if args.by_kind else ("families", "n_objects")
    out_console = Console()
    if not out_console.is_terminal:
        out_console = Console(width=130)
    out_console.print(_table(report, f"ShapesVQA eval ({args.world} world): {args.n} questions, seed {args.seed}, maps: {method}", sections))
    console.print(f"wrote {args.out}")
    return 0


def _pope_tables(report: dict, title: str):
    from rich.table import Table

    def fmt(x):
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    t = Table(title=title, caption="\"yes\" is the positive class; yes-ratio: share of \"yes\" answers")
    for col in ("sampling", "n", "accuracy", "precision", "recall", "F1", "yes-ratio", "false yes"):
        t.add_column(col, justify="left" if col == "sampling" else "right", no_wrap=True)
    for sampling, m in report["pope"].items():
        t.add_row(sampling, str(m["n"]), fmt(m["accuracy"]), fmt(m["precision"]), fmt(m["recall"]), fmt(m["f1"]),
                  fmt(m["yes_ratio"]), str(m["false_yes"]))

    groups = {f"{sampling} / {name}": g[name] for sampling, g in report["hallucination_maps"].items()
              for name in ("hallucinated", "correct_yes")}
    h = _locations_table("Maps of \"yes\" answers: share of argmax on each group (mean mass), normalised entropy",
                         "asked: an object of the asked type; cooccurring: its co-occurrence partner or cue in the scene",
                         "sampling / answers", groups)
    return t, h


def _locations_table(title: str, caption: str, first: str, groups: dict):
    """Where groups of maps look (:func:`shapesvqa.pope.location_stats` per row label), as a table."""
    from rich.table import Table

    from .pope import LOCATIONS

    h = Table(title=title, caption=caption)
    h.add_column(first, no_wrap=True)
    h.add_column("n", justify="right")
    for loc in LOCATIONS:
        h.add_column(loc.replace("_", " "), justify="right", no_wrap=True)
    h.add_column("entropy", justify="right")
    for label, s in groups.items():
        if not s["n"]:
            h.add_row(label, "0", *["-"] * (len(LOCATIONS) + 1))
            continue
        h.add_row(label, str(s["n"]), *[f"{s['argmax_on'][loc]:.2f} ({s['mass'][loc]:.2f})" for loc in LOCATIONS],
                  f"{s['entropy']:.3f}")
    return h


def _eval_pope(args, model, processor, cfg, method, proxy, proxy_path, model_dir, console) -> int:
    from rich.console import Console
    from rich.progress import Progress

    from .evaluate import evaluate_pope
    from .pope import pope_split, scene_id

    questions, stats = pope_split(args.n, args.seed, cfg, k=args.pope_k, stats_scenes=args.stats_scenes)
    total = len({(scene_id(ex), ex.question) for exs in questions.values() for ex in exs})
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"POPE ({method})", total=total)
        report = evaluate_pope(model, processor, questions, cfg, method=method, proxy=proxy,
                               batch_size=args.batch_size, on_batch=lambda n: prog.update(task, completed=n))
    from .world import world_options

    report = {"model": str(model_dir), "method": method, "proxy": str(proxy_path) if proxy_path else None,
              "world": args.world, "world_options": world_options(cfg), "seed": args.seed, "scenes": args.n,
              "k": args.pope_k, "stats_scenes": stats.n_scenes, **report}
    rows = report.pop("rows")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.rows:
        args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out_console = Console()
    if not out_console.is_terminal:
        out_console = Console(width=150)
    for table in _pope_tables(report, f"POPE on ShapesVQA ({args.world} world): {args.n} scenes, seed {args.seed}, "
                                      f"maps: {method}"):
        out_console.print(table)
    console.print(f"wrote {args.out}")
    return 0


def _eval_describe(args, model, processor, cfg, method, proxy, proxy_path, model_dir, console) -> int:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from .evaluate import evaluate_describe
    from .world import DESCRIBE, generate, world_options

    examples = list(generate(args.n, args.seed, cfg, family=DESCRIBE))
    with Progress(console=console, transient=True) as prog:
        task = prog.add_task(f"describe ({method})", total=len(examples))
        report = evaluate_describe(model, processor, examples, cfg, method=method, proxy=proxy,
                                   batch_size=args.batch_size, on_batch=lambda n: prog.update(task, completed=n))
    report = {"model": str(model_dir), "method": method, "proxy": str(proxy_path) if proxy_path else None,
              "world": args.world, "world_options": world_options(cfg), "seed": args.seed, "n": args.n, **report}
    rows = report.pop("rows")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.rows:
        args.rows.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = report["chair"]

    def fmt(x):
        return "-" if x is None else (f"{x:.3f}" if isinstance(x, float) else str(x))

    t = Table(title=f"Descriptions on ShapesVQA ({args.world} world): {args.n} scenes, seed {args.seed}",
              caption="CHAIR_s: descriptions with an invented object; CHAIR_i: invented mentions / mentions; "
                      "Cover: objects mentioned / present; Attr: wrong-size mentions of present objects")
    for col in ("n", "CHAIR_s", "CHAIR_i", "Cover", "Attr", "mentions / description"):
        t.add_column(col, justify="right", no_wrap=True)
    t.add_row(str(c["n"]), fmt(c["chair_s"]), fmt(c["chair_i"]), fmt(c["cover"]), fmt(c["attr"]), fmt(c["length"]))
    h = _locations_table(f"Maps of mentions ({method}): share of argmax on each group (mean mass), normalised entropy",
                         "asked: an object of the mentioned type; cooccurring: its co-occurrence partner or cue",
                         "mentions", {k.replace("_", " "): v for k, v in report["maps"].items()})
    out_console = Console()
    if not out_console.is_terminal:
        out_console = Console(width=150)
    out_console.print(t)
    if method != "none":
        out_console.print(h)
    console.print(f"wrote {args.out}")
    return 0


def _count(text: str) -> int:
    """An argparse type: a whole number >= 1 (a count of questions, scenes, objects, threads ...)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="shapesvqa", description="ShapesVQA: synthetic grounded VQA and its reference model")
    sub = ap.add_subparsers(dest="command", required=True)

    ex = sub.add_parser("export", help="write PNG images, PNG evidence masks and data.jsonl")
    ex.add_argument("--n", type=_count, default=EXPORT_N, help=f"number of questions (default {EXPORT_N})")
    ex.add_argument("--seed", type=int, default=EXPORT_SEED,
                    help=f"world seed: the same seed gives the same questions (default {EXPORT_SEED})")
    ex.add_argument("--out", type=Path, default=Path(EXPORT_OUT),
                    help=f"output folder for data.jsonl, images/, masks/ (default {EXPORT_OUT})")
    ex.add_argument("--family", choices=["attribute", "relational", "existence", "counting", "describe"], default=None)
    ex.add_argument("--min-objects", type=_count, default=2)
    ex.add_argument("--max-objects", type=_count, default=6)
    _world_args(ex, "default, the world without hallucination options; the shipped model is trained on cooccur-describe")
    ex.add_argument("--bias-rate", type=float, default=None,
                    help="label this share of partner questions 'yes' (default: truthful labels, bias 0)")
    ex.add_argument("--describe-rate", type=float, default=None,
                    help="share of descriptions among the questions (default: the world's; 0: short answers only, "
                         "as answer-level calibration wants: descriptions are judged claim by claim)")
    ex.add_argument("--pope", choices=["random", "popular", "adversarial"], default=None,
                    help="write the POPE questions of one sampling instead (--n counts scenes)")
    ex.set_defaults(func=_export)

    ev = sub.add_parser("eval", help="accuracy and pointing game per family on a fresh split")
    ev.add_argument("--model", type=Path, default=None, help="save_pretrained folder (default: the shipped model)")
    ev.add_argument("--method", nargs="+", default=["gradient"], metavar="METHOD [PATH]",
                    help="gradient (default), none, or proxy [PATH] (default PATH: the shipped proxy, with the shipped model)")
    ev.add_argument("--proxy", type=Path, default=None, help="proxy folder (same as --method proxy PATH)")
    ev.add_argument("--n", type=_count, default=1000)
    ev.add_argument("--seed", type=int, default=12345)
    ev.add_argument("--out", type=Path, default=Path(EVAL_OUT), help=f"JSON report (default {EVAL_OUT})")
    ev.add_argument("--rows", type=Path, default=None, help="also write per-question rows as JSONL")
    ev.add_argument("--family", choices=["attribute", "relational", "existence", "counting"], default=None)
    ev.add_argument("--min-objects", type=_count, default=2)
    ev.add_argument("--max-objects", type=_count, default=6)
    ev.add_argument("--by-kind", action="store_true", help="also print a row per question kind")
    ev.add_argument("--batch-size", type=_count, default=32)
    ev.add_argument("--threads", type=_count, default=2)
    _world_args(ev, "the world the model was trained on, from its training.json: cooccur-describe for the shipped model")
    ev.add_argument("--pope", action="store_true",
                    help="POPE table (random / popular / adversarial) and the maps of hallucinated 'yes' answers; "
                         "--n counts scenes")
    ev.add_argument("--describe", action="store_true",
                    help="describe --n scenes: CHAIR_s, CHAIR_i, Cover, Attr, and where the maps of invented "
                         "mentions look beside correct ones")
    ev.add_argument("-v", "--verbose", action="store_true",
                    help="also show the libraries' progress bars (transformers' 'Loading weights')")
    ev.set_defaults(func=_eval)
    return ap


def _world_args(ap: argparse.ArgumentParser, default_help: str) -> None:
    from .world import WORLDS

    ap.add_argument("--world", choices=list(WORLDS), default=None,
                    help=f"world preset (default: {default_help}; see docs/shapesvqa.md)")
    ap.add_argument("--pope-k", type=_count, default=3, help="POPE: positives (and negatives) per scene")
    ap.add_argument("--stats-scenes", type=_count, default=1000,
                    help="POPE: count type frequencies over at least this many scenes of the split")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "model"):  # a command that loads a model
        from fastrm_core.verbosity import quiet_model_loading

        quiet_model_loading(args.model, verbose=args.verbose)
    try:
        return int(args.func(args) or 0)
    except GuardrailError as exc:  # raised on purpose: one line, no traceback
        from rich.console import Console
        from rich.markup import escape

        Console(stderr=True).print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
