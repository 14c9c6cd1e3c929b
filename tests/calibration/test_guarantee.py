"""The guaranteed-precision rule: the bound holds at its stated rate, and it refuses impossible targets."""

import numpy as np
import pytest

from calibration import clopper_pearson_upper, guaranteed_threshold
from calibration.guarantee import min_confident_for
from fastrm_common.errors import CalibrationError


def test_clopper_pearson_matches_known_values():
    # 0 failures in n: the bound is 1 - delta ** (1 / n)
    for n in (1, 10, 114, 1000):
        assert clopper_pearson_upper(0, n, 0.1) == pytest.approx(1 - 0.1 ** (1 / n))
    assert clopper_pearson_upper(5, 5, 0.1) == 1.0
    # monotone in k, decreasing in n
    ub = clopper_pearson_upper(np.arange(5), 100, 0.05)
    assert np.all(np.diff(ub) > 0)
    assert clopper_pearson_upper(3, 200, 0.1) < clopper_pearson_upper(3, 100, 0.1)
    with pytest.raises(CalibrationError):
        clopper_pearson_upper(3, 2, 0.1)


def test_min_confident():
    assert min_confident_for(0.98, 0.1) == 114
    assert clopper_pearson_upper(0, 114, 0.1) <= 0.02 < clopper_pearson_upper(0, 113, 0.1)


def _simulate(n, rng):
    # score uniform on [0, 1]; P(wrong | s) = 0.2 s, so the error rate among {s < t} is 0.1 t
    s = rng.random(n)
    ok = rng.random(n) >= 0.2 * s
    return s, ok


def test_guarantee_holds_at_the_stated_rate():
    """Over many calibration samples, the chosen threshold's true error rate exceeds 1 - target at most ~delta of the time."""
    target, delta = 0.95, 0.1  # true limit: 0.1 t <= 0.05  <=>  t <= 0.5
    rng = np.random.default_rng(0)
    chosen, violations, refused = [], 0, 0
    reps = 200
    for _ in range(reps):
        s, ok = _simulate(2000, rng)
        g = guaranteed_threshold(s, ok, target, delta)
        if g.threshold is None:  # a refusal is never a violation, but must be rare here
            refused += 1
            continue
        assert g.upper_bound <= 1 - target + 1e-12
        chosen.append(g.threshold)
        violations += g.threshold > 0.5
    rate = violations / reps
    assert rate <= delta + 0.03, f"the guarantee failed in {rate:.1%} of samples (allowed {delta:.0%})"
    assert refused <= 0.05 * reps
    assert np.mean(chosen) > 0.25  # not vacuous: it lets a useful share through


def test_refuses_when_the_target_is_impossible():
    rng = np.random.default_rng(1)
    s, ok = _simulate(2000, rng)
    g = guaranteed_threshold(s, ok, target=0.999, delta=0.1)  # even the best answers err at ~0.1 s > 0.001
    assert g.threshold is None and g.n_confident == 0
    assert "cannot be certified" in g.note or "needs at least" in g.note
    assert g.statement().startswith("no guarantee")
    # too few answers for the target: refuse, never accept everything
    g = guaranteed_threshold(np.arange(50.0), np.ones(50, bool), target=0.98, delta=0.1)
    assert g.threshold is None and "needs at least 183" in g.note  # 0 errors in 183: bound 2% at delta 0.1 / 4


def test_one_early_error_does_not_stop_every_walk():
    # a confidently wrong answer right at the start: the first walk stops, a later one carries on
    s = np.arange(3000.0)
    ok = np.ones(3000, bool)
    ok[[0, 1]] = False
    ok[2500:] = np.arange(500) % 2 == 0  # the last sixth is half wrong
    g = guaranteed_threshold(s, ok, target=0.98, delta=0.1)
    assert g.threshold is not None and g.n_confident >= 2000


def test_everything_confident_is_said():
    g = guaranteed_threshold(np.arange(500.0), np.ones(500, bool), target=0.98, delta=0.1)
    assert g.n_confident == 500 and g.threshold > 499 and "every calibration answer" in g.note


def test_bad_arguments():
    with pytest.raises(CalibrationError, match="target"):
        guaranteed_threshold([0.1, 0.2], [True, False], target=1.0)
    with pytest.raises(CalibrationError, match="delta"):
        guaranteed_threshold([0.1, 0.2], [True, False], delta=1.5)
    with pytest.raises(CalibrationError, match="finite"):
        guaranteed_threshold([0.1, np.nan], [True, False])
