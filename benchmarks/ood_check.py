"""How the guard's verdict treats inputs unlike anything in the calibration data.

Runs the shipped reference model, proxy and calibration (or ``--calibration``) through the Guard on
in-distribution ShapesVQA questions (a fresh world seed) and on out-of-distribution variants:
grayscale scenes, uniform noise, blank images, tiny (8x8) and huge (1024x1024) images, and
questions the world never asks on in-distribution scenes. Prints, per kind, the share of answers
marked uncertain, and for in-distribution answers the precision of the confident set with and
without the novelty gate. With ``--signals`` (stored answers of ``guardrail calibrate --signals-out``
on in-distribution data), also the confident share and precision of those answers with and
without the gate: what the gate costs where nothing is out of distribution.

    python benchmarks/ood_check.py --n 60
    python benchmarks/ood_check.py --n 60 --signals runs/acceptance-signals.jsonl
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image
from rich.console import Console
from rich.table import Table

from calibration import Calibration, get_score, is_correct
from fastrm_core import capture
from fastrm_core.inputs import prepare_inputs
from guardrail import Guard
from guardrail.calibrate import read_signals
from fastrm_common.presets import get_preset

OUTSIDE_QUESTIONS = (
    "What is the capital of France?",
    "Who painted this picture?",
    "What time is it?",
    "How old is the person in the photo?",
    "What breed is the dog?",
    "What is the weather like today?",
    "Which team won the match?",
    "What language is the sign written in?",
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=60, help="inputs per kind")
    ap.add_argument("--seed", type=int, default=8086, help="world seed of the scenes (default: the acceptance split's)")
    ap.add_argument("--calibration", default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--signals", default=None, help="stored in-distribution answers (guardrail calibrate --signals-out)")
    args = ap.parse_args(argv)
    console = Console(width=120)
    guard = Guard.from_pretrained("reference", calibration=args.calibration, policy="observe-only")
    cal: Calibration = guard.calibration
    ungated = cal.model_copy(update={"novelty_gate": None})
    rng = np.random.default_rng(args.seed)
    examples = list(get_preset("reference").examples(args.n, args.seed))  # the model's world, true labels
    size = examples[0].image.size
    kinds: dict[str, list[tuple[Image.Image, str, list[str] | None]]] = {
        "in-distribution": [(ex.image, ex.question, list(ex.answers)) for ex in examples],
        "grayscale scene": [(ex.image.convert("L").convert("RGB"), ex.question, None) for ex in examples],
        "uniform noise": [(Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)), ex.question, None)
                          for ex in examples],
        "blank image": [(Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 256, 3))), ex.question, None)
                        for ex in examples],
        "tiny image (8x8)": [(ex.image.resize((8, 8), Image.BILINEAR), ex.question, None) for ex in examples],
        "huge image (1024x1024)": [(ex.image.resize((1024, 1024), Image.NEAREST), ex.question, None) for ex in examples],
        "question outside the world": [(ex.image, OUTSIDE_QUESTIONS[i % len(OUTSIDE_QUESTIONS)], None)
                                       for i, ex in enumerate(examples)],
    }
    table = Table(title=f"verdicts of {cal.score.name} + {cal.rule}"
                        + (f" + novelty gate ({cal.novelty_gate.quantile:g})" if cal.novelty_gate else "")
                        + f", {args.n} inputs per kind")
    for col in ("inputs", "uncertain", "uncertain without the gate", "median novelty", "median score", "gated by view"):
        table.add_column(col, justify="right")
    id_stats = None
    for kind, items in kinds.items():
        results = []
        for i in range(0, len(items), args.batch_size):
            chunk = items[i : i + args.batch_size]
            results += guard.generate_batch([(img, q) for img, q, _ in chunk], max_new_tokens=8)
        verdicts = np.array([r.verdict for r in results])
        no_gate = np.array([r.score is None or ungated.verdict(r.score) == "uncertain" for r in results])
        nov = [r.scores.get("novelty") for r in results if r.scores.get("novelty") is not None]
        table.add_row(kind, f"{np.mean(verdicts == 'uncertain'):.1%}", f"{no_gate.mean():.1%}",
                      f"{np.median(nov):.2f}" if nov else "-",
                      f"{np.median([r.score for r in results if r.score is not None]):.3f}",
                      _gated_by_view(guard, items, cal))
        if kind == "in-distribution":
            ok = np.array([is_correct(r.answer, refs) for r, (_, _, refs) in zip(results, items)])
            conf = verdicts == "confident"
            conf_ng = ~no_gate
            id_stats = (ok.mean(), conf.mean(), ok[conf].mean() if conf.any() else float("nan"),
                        conf_ng.mean(), ok[conf_ng].mean() if conf_ng.any() else float("nan"))
    console.print(table)
    if id_stats is not None:
        acc, share, prec, share_ng, prec_ng = id_stats
        console.print(f"in-distribution: accuracy {acc:.3f}; confident {share:.1%} with precision {prec:.4f} "
                      f"(without the gate: confident {share_ng:.1%}, precision {prec_ng:.4f})")


    if args.signals:
        _stored(console, cal, args.signals)


def _gated_by_view(guard, items, cal, batch_size: int = 16) -> str:
    """How many inputs each novelty view puts at or above the gate (one input can be seen by several views).

    One prefill forward per batch under the capture, for the pooled prompt features the
    GuardResult does not carry.
    """
    if cal.novelty_gate is None:
        return "-"
    nov = get_score("novelty", **cal.novelty_gate.score.params).model
    counts = dict.fromkeys((v.name for v in nov.views), 0)
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        inputs = prepare_inputs(guard.model, guard.processor, [img for img, _, _ in chunk],
                                [guard.prompt(q) for _, q, _ in chunk])
        with torch.no_grad(), capture(guard.model, guard.proxy) as cap:
            guard.model(**inputs)
        for feats in cap.features:
            for name, d in nov.view_distances(feats).items():
                counts[name] += int(d >= cal.novelty_gate.threshold)
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def _stored(console, cal: Calibration, path: str) -> None:
    rows, _ = read_signals(path)
    score = get_score(cal.score.name, **cal.score.params).many([r.signals for r in rows])
    ok = np.array([r.correct for r in rows])
    below = score < cal.threshold
    gated = np.zeros(len(rows), bool)
    if cal.novelty_gate is not None:
        nov = get_score("novelty", **cal.novelty_gate.score.params).many([r.signals for r in rows])
        gated = nov >= cal.novelty_gate.threshold
    conf = below & ~gated
    console.print(f"stored in-distribution answers ({len(rows)}, {path}): accuracy {ok.mean():.3f}; confident "
                  f"{conf.mean():.1%} with precision {ok[conf].mean():.4f} ({int((conf & ~ok).sum())} wrong); "
                  f"without the gate {below.mean():.1%} with precision {ok[below].mean():.4f} "
                  f"({int((below & ~ok).sum())} wrong); gated {gated.mean():.1%}")


if __name__ == "__main__":
    main()
