"""Choose the shipped calibration's score and rule on a development split: never on held-out answers.

Reads the signals ``guardrail calibrate --signals-out`` stored for the reference calibration data,
takes only the part ``guardrail calibrate`` fits on (the same stratified split, ``--fit-fraction``
and ``--seed``), and splits that part again: scores and rules are fitted on one half and compared on
the other (the development half). The held-out half of the calibration data is never read.

    python benchmarks/choose_default_score.py runs/calibration-signals.jsonl
    python benchmarks/choose_default_score.py runs/claim-calibration-signals.jsonl   # claims: split by answer
"""

from __future__ import annotations

import argparse

import numpy as np
from rich.console import Console
from rich.table import Table

from calibration import auroc, evaluate_threshold, fit_calibration, fit_score
from calibration import table_scores
from guardrail.calibrate import fit_heldout_split, read_signals, score_available, score_label


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("signals")
    ap.add_argument("--fit-fraction", type=float, default=0.5, help="as given to guardrail calibrate")
    ap.add_argument("--seed", type=int, default=0, help="as given to guardrail calibrate")
    ap.add_argument("--target-precision", type=float, default=0.98)
    ap.add_argument("--delta", type=float, default=0.1)
    args = ap.parse_args(argv)
    rows, _ = read_signals(args.signals)
    correct = np.array([r.correct for r in rows])
    # the split guardrail calibrate fits on (claims: by answer), the held-out part never read
    fit_idx, _held = fit_heldout_split(rows, correct, args.fit_fraction, args.seed)
    dev_rows = [rows[i] for i in fit_idx]
    c = correct[fit_idx]
    a_idx, b_idx = fit_heldout_split(dev_rows, c, 0.5, args.seed + 1)
    sig_a = [dev_rows[i].signals for i in a_idx]
    sig_b = [dev_rows[i].signals for i in b_idx]
    table = Table(title=f"development split: fitted on {len(a_idx)}, compared on {len(b_idx)} "
                        f"(of the {len(fit_idx)} fitting answers; accuracy {c.mean():.3f})")
    for col in ("score", "AUROC", "guaranteed: share conf.", "precision", "paper_midpoint: share", "precision "):
        table.add_column(col, justify="right")
    for name, params in table_scores():
        if not score_available(name, dev_rows, params):
            continue
        score = fit_score(name, sig_a, c[a_idx], **params)
        va, vb = score.many(sig_a), score.many(sig_b)
        oka, okb = np.isfinite(va), np.isfinite(vb)
        va, vb, ca, cb = va[oka], vb[okb], c[a_idx][oka], c[b_idx][okb]
        cells = [score_label(name, params), f"{auroc(vb, ~cb):.3f}"]
        for rule in ("guaranteed_precision", "paper_midpoint"):
            cal = fit_calibration(va, ca, rule=rule, target_precision=args.target_precision, delta=args.delta)
            m = evaluate_threshold(vb, cb, cal.threshold)
            cells += [f"{m.share_confident:.3f}", "-" if m.precision_confident is None else f"{m.precision_confident:.4f}"]
        table.add_row(*cells)
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
