"""What `guardrail calibrate` prints: readable at 80 columns, every rule's note shown."""

from __future__ import annotations

import io

import numpy as np
from rich.console import Console

from calibration import fit_calibration
from guardrail.cli.main import _print_calibration


def printed(cal, width=80) -> str:
    buf = io.StringIO()
    side = {"n_fit": 40, "n_heldout": 40, "accuracy_heldout": 0.5, "auroc_answer_prob_heldout": 0.7,
            "auroc_entropy_heldout": {"mean": 0.8, "max": 0.7, "first": 0.6}}
    _print_calibration(Console(file=buf, width=width, color_system=None), cal, side)
    return buf.getvalue()


def fitted(correct_scores, wrong_scores, **kwargs):
    s = np.r_[correct_scores, wrong_scores]
    c = np.r_[np.ones(len(correct_scores), bool), np.zeros(len(wrong_scores), bool)]
    return fit_calibration(s[::2], c[::2], heldout=(s[1::2], c[1::2]), **kwargs)


def test_calibration_table_is_readable_at_80_columns():
    rng = np.random.default_rng(0)
    cal = fitted(rng.normal(0.3, 0.05, 80), rng.normal(0.6, 0.05, 80))
    out = printed(cal)
    assert "…" not in out  # nothing cut short
    tables = out.split("* the rule in use")[0]
    assert max(len(line) for line in tables.splitlines()) <= 80
    rules = [r.rule for r in cal.rules_table()]
    assert len(rules) >= 3 and f"{cal.rule} *" in tables
    for word in (*rules, "threshold", "AUROC", "confident", "uncertain", "precision", "TP", "FN"):
        assert tables.count(word) >= (2 if word in rules else 1), word  # each rule in both tables


def test_a_note_of_a_rule_not_in_use_is_printed():
    # a few wrong answers in a narrow cluster inside many correct ones: the prior-weighted
    # density of the correct answers dominates everywhere, so the densities never cross
    from scipy.stats import norm

    quantiles = norm.ppf((np.arange(400) + 0.5) / 400)
    cal = fitted(0.5 + 0.2 * quantiles, 0.52 + 0.05 * quantiles[::25])
    crossing = cal.alternatives["density_crossing"]
    assert cal.rule == "paper_midpoint" and "fell back to the midpoint" in crossing.note
    out = printed(cal, width=400)
    assert crossing.note in out and "(rule not in use)" in out
