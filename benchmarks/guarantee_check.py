"""Does the shipped calibration deliver on a split the project never used?

Reads signals that ``guardrail calibrate --signals-out`` stored for a fresh ShapesVQA split (the
acceptance split, world seed 8086: not used by any other artifact, see the Makefile), and

1. applies the shipped calibration as it is (its score, threshold and novelty gate) to every answer:
   AUROC of its score for predicting a wrong answer, share confident, precision of confident answers;
2. refits the shipped configuration (same score, rule, target, delta, gate quantile) on 100 random
   stratified fit / held-out halves of the fresh split and counts how often the held-out precision of
   confident answers reaches the target (the guarantee promises at least 1 - delta of the time).

    python benchmarks/guarantee_check.py runs/acceptance-signals.jsonl
    python benchmarks/guarantee_check.py runs/acceptance-signals.jsonl --calibration other.json --splits 100
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console

from calibration import Calibration, auroc, get_score
from guardrail.calibrate import calibrate_scores, read_signals


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("signals")
    ap.add_argument("--calibration", default=None, help="default: the shipped reference calibration")
    ap.add_argument("--splits", type=int, default=100)
    ap.add_argument("--target-precision", type=float, default=None, help="default: the calibration's")
    ap.add_argument("--delta", type=float, default=None, help="default: the calibration's")
    args = ap.parse_args(argv)
    console = Console(width=120)
    if args.calibration is None:
        from shapesvqa.assets import reference_calibration_path

        args.calibration = reference_calibration_path()
    cal = Calibration.load(args.calibration)
    rows, _ = read_signals(args.signals)
    correct = np.array([r.correct for r in rows])
    score = get_score(cal.score.name, **cal.score.params)
    values = score.many([r.signals for r in rows])
    novelty = None
    if cal.novelty_gate is not None:
        gate = get_score(cal.novelty_gate.score.name, **cal.novelty_gate.score.params)
        novelty = gate.many([r.signals for r in rows])
    verdicts = np.array([cal.verdict(v, novelty=None if novelty is None else novelty[i]) == "confident"
                         for i, v in enumerate(values)])
    console.print(f"[bold]1. the shipped calibration on the fresh split[/bold] ({len(rows)} answers, accuracy "
                  f"{correct.mean():.3f}): score {score.label}, rule {cal.rule}, threshold {cal.threshold}")
    console.print(f"   AUROC {auroc(values, ~correct):.4f}; confident {verdicts.mean():.3f} of answers; precision of "
                  f"confident {correct[verdicts].mean():.4f} ({int((verdicts & ~correct).sum())} wrong of "
                  f"{int(verdicts.sum())}); gated as novel {0.0 if novelty is None else float((novelty >= cal.novelty_gate.threshold).mean()):.4f}")
    target = args.target_precision or cal.target_precision or 0.98
    delta = args.delta or cal.delta or 0.1
    params = {k: v for k, v in cal.score.params.items() if k in ("aggregation", "normalized")}
    quantile = cal.novelty_gate.quantile if cal.novelty_gate is not None else None
    precisions, shares, refused = [], [], 0
    for seed in range(args.splits):
        fitted, side = calibrate_scores(rows, score=cal.score.name, score_params=params, rule="guaranteed_precision",
                                        seed=seed, target_precision=target, delta=delta, novelty_quantile=quantile,
                                        table=False, command="benchmarks/guarantee_check.py")
        v = side["verdict_heldout"]
        if fitted.threshold is None:
            refused += 1
        shares.append(v["share_confident"])
        precisions.append(1.0 if v["precision_confident"] is None else v["precision_confident"])  # nothing confident: no error
    p = np.array(precisions)
    ok = int((p >= target).sum())
    console.print(f"[bold]2. guaranteed_precision refitted on {args.splits} random fit / held-out halves[/bold] "
                  f"(score {score.label}, target {target}, delta {delta}, novelty gate quantile {quantile})")
    console.print(f"   held-out precision >= {target} in {ok} of {args.splits} splits ({ok / args.splits:.0%}; "
                  f"the guarantee promises >= {1 - delta:.0%}); refused {refused}")
    console.print(f"   held-out precision: min {p.min():.4f}, median {np.median(p):.4f}, mean {p.mean():.4f}; share "
                  f"confident: min {min(shares):.3f}, median {np.median(shares):.3f}, max {max(shares):.3f}")


if __name__ == "__main__":
    main()
