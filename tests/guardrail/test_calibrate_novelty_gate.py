"""The novelty gate fitted by calibrate_scores gates about 1 - quantile of new in-distribution inputs."""

from __future__ import annotations

import numpy as np

from calibration import AnswerSignals, fit_score, get_score
from guardrail.calibrate import ScoredAnswer, calibrate_scores


def _rows(n: int, seed: int, width: int = 16) -> list[ScoredAnswer]:
    """Correlated Gaussian prompt features in the five blocks, answers right 80% of the time."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(5 * width, 5 * width)) / 8
    rows = []
    for k in range(n):
        ok = bool(rng.random() < 0.8)
        lp = np.log(rng.uniform(0.7, 1.0, 1) if ok else rng.uniform(0.1, 0.8, 1))
        rows.append(ScoredAnswer(id=str(k), answer="a", correct=ok, signals=AnswerSignals(
            content=np.array([True]), token_logprob=lp, features=rng.normal(size=5 * width) @ mix)))
    return rows


def test_gate_threshold_comes_from_inputs_the_gaussians_did_not_see():
    rows = _rows(1000, seed=0)
    cal, side = calibrate_scores(rows, score="token_nll", rule="paper_midpoint", novelty_quantile=0.9, table=False)
    gate = cal.novelty_gate
    assert gate is not None and gate.quantile == 0.9
    assert [v["name"] for v in gate.score.params["views"]] == ["image", "question"]
    # held-out inputs are gated at about the nominal 10% ...
    assert 0.05 < side["verdict_heldout"]["share_gated"] < 0.16
    # ... where a threshold taken on the Gaussians' own fitting inputs gates about twice as many
    fit = [r.signals for r in rows[:500]]
    in_sample = fit_score("novelty", fit, None, reference=fit, quantile=0.9)
    t = np.quantile(in_sample.many(fit), 0.9)
    assert np.mean(in_sample.many([r.signals for r in rows[500:]]) >= t) > 0.16
    # the artifact's gate scores the same as the fitted one
    again = get_score("novelty", **gate.score.params)
    assert np.isfinite(again(rows[0].signals))
