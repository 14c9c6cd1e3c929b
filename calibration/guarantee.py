"""A confidence threshold with a finite-sample guarantee on the precision of "confident" answers.

The question a gate must answer: *among the answers I let through, how many are wrong?*
:func:`guaranteed_threshold` picks the largest threshold ``t`` (answers with
``score < t`` are "confident") such that, with probability at least ``1 - delta`` over
the draw of the calibration sample,

    P(answer wrong | score < t) <= 1 - target

for new answers drawn from the same distribution (the calibration answers and the new
ones are exchangeable: same model, same kind of inputs, independent draws).

How (Learn-then-Test, Angelopoulos, Bates, Candès, Jordan & Lei, 2021,
"Learn then Test: Calibrating Predictive Algorithms to Achieve Risk Control",
arXiv:2110.01052, with the binomial tail p-value they use for selective prediction):

1. Candidate thresholds are ordered from the most selective (fewest confident answers)
   to the least. For each, the null hypothesis is "the error rate among confident
   answers exceeds ``alpha = 1 - target``".
2. Given the ``n`` calibration answers below a candidate, the number of wrong ones
   among them is Binomial(n, error rate). The exact (Clopper-Pearson) one-sided upper
   confidence bound at level ``1 - delta`` on the error rate is
   ``beta.ppf(1 - delta, k + 1, n - k)`` for ``k`` wrong answers; it is at most
   ``alpha`` exactly when the binomial tail p-value ``P(Binom(n, alpha) <= k)`` is at
   most ``delta``.
3. Fixed-sequence testing: walk the candidates in order and reject each null while its
   bound stays at or below ``alpha``; stop at the first one that does not. Every
   rejected threshold is then controlled simultaneously with probability
   ``>= 1 - delta`` (the family-wise error of fixed-sequence testing is at most its
   level without any multiplicity correction).
4. One unlucky wrong answer among the most confident ones would stop a single walk at
   its first step, so the rule runs ``STARTS`` walks (Learn-then-Test's fixed sequence
   with several starting points), each at level ``delta / STARTS`` (Bonferroni): walk
   ``j`` starts at ``n_min * 2**j`` confident answers, where
   ``n_min = ceil(log(delta / STARTS) / log(1 - alpha))`` is the smallest set that could
   pass with no error. Starting points depend on ``target``, ``delta`` and ``n`` only.
   The rule returns the largest threshold rejected by any walk.

The candidates are the order statistics of the calibration scores, which makes the
thresholds data-dependent; the held-out check that :func:`calibration.fit.fit_calibration`
reports, the simulation in the tests and ``benchmarks/guarantee_check.py`` measure how
often the bound holds in practice.

When no walk passes its first step, the rule *refuses*: it returns no threshold,
and a calibration built on it marks nothing confident (the target is out of reach for
this score on this much data), instead of silently accepting everything.

This module is pure (numpy/scipy, no I/O).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastrm_common.errors import CalibrationError

__all__ = ["STARTS", "GuaranteeResult", "clopper_pearson_upper", "guaranteed_threshold", "min_confident_for"]

#: number of fixed-sequence walks; each runs at level delta / STARTS
STARTS = 4


def clopper_pearson_upper(k: Any, n: Any, delta: float) -> Any:
    """Exact one-sided upper confidence bound on a binomial proportion.

    Args:
        k: observed failures (wrong answers), ``0 <= k <= n``.
        n: trials (confident answers), ``n >= 1``; arrays broadcast.
        delta: miscoverage, in ``(0, 1)``: the bound holds with probability ``>= 1 - delta``.

    Returns:
        The bound (float, or an array like the inputs); 1.0 when ``k == n``.

    Example:
        >>> round(clopper_pearson_upper(0, 114, 0.1), 4)  # 0 errors in 114: error rate <= 2% at 90%
        0.0200
    """
    k_arr = np.asarray(k, dtype=np.float64)
    n_arr = np.asarray(n, dtype=np.float64)
    if not 0.0 < float(delta) < 1.0:
        raise CalibrationError(f"delta must be strictly between 0 and 1, got {delta!r}")
    if (n_arr < 1).any() or (k_arr < 0).any() or (k_arr > n_arr).any():
        raise CalibrationError("clopper_pearson_upper needs 0 <= k <= n and n >= 1")
    from scipy.stats import beta  # scipy loads only when a bound is computed: ``import calibration`` stays light

    with np.errstate(invalid="ignore"):
        ub = beta.ppf(1.0 - float(delta), k_arr + 1.0, np.maximum(n_arr - k_arr, 1e-300))
    ub = np.where(k_arr >= n_arr, 1.0, ub)
    return float(ub) if ub.ndim == 0 else ub


def min_confident_for(target: float, delta: float) -> int:
    """Fewest confident answers for which ``target`` can be certified (with zero errors among them).

    Example:
        >>> min_confident_for(0.98, 0.1)
        114
    """
    alpha = 1.0 - float(target)
    return int(math.ceil(math.log(float(delta)) / math.log1p(-alpha) - 1e-12))


@dataclass(frozen=True)
class GuaranteeResult:
    """What :func:`guaranteed_threshold` found.

    ``threshold`` is None when the rule refused (see ``note``); ``n_confident`` and
    ``n_wrong_confident`` count the calibration answers below it; ``upper_bound`` is the
    certified error rate among confident answers (at most ``1 - target``, at level ``delta / STARTS``).
    """

    threshold: float | None
    target: float
    delta: float
    n_confident: int
    n_wrong_confident: int
    upper_bound: float | None
    note: str | None = None

    def statement(self) -> str:
        """The guarantee in one sentence (or why there is none)."""
        if self.threshold is None:
            return (f"no guarantee: precision {self.target:g} cannot be certified at delta {self.delta:g} "
                    "on this calibration data; nothing is marked confident")
        return (f"with probability >= {1 - self.delta:g} over the calibration sample, at most "
                f"{100 * (1 - self.target):.3g}% of confident answers are wrong (precision >= {self.target:g}); "
                "assumes new answers are exchangeable with the calibration answers")


def guaranteed_threshold(scores: Any, correct: Any, target: float = 0.98, delta: float = 0.1) -> GuaranteeResult:
    """The largest threshold whose precision among confident answers is certified at ``target``.

    Args:
        scores: shape ``(n,)``, answer scores, higher = more uncertain (finite).
        correct: shape ``(n,)``, booleans: was the answer right.
        target: the precision to guarantee among confident answers, in ``(0, 1)``.
        delta: the probability that the guarantee fails (over the calibration sample), in ``(0, 1)``.

    Returns:
        A :class:`GuaranteeResult`; answers with ``score < threshold`` are confident.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> s = rng.random(2000)
        >>> ok = rng.random(2000) > s * 0.2          # errors become likelier as the score grows
        >>> g = guaranteed_threshold(s, ok, target=0.98, delta=0.1)
        >>> g.upper_bound <= 0.02, g.n_confident > 183
        (True, True)
    """
    if not 0.0 < float(target) < 1.0:
        raise CalibrationError(f"target precision must be strictly between 0 and 1, got {target!r}")
    if not 0.0 < float(delta) < 1.0:
        raise CalibrationError(f"delta must be strictly between 0 and 1, got {delta!r}")
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if s.ndim != 1 or s.shape != c.shape or s.size == 0:
        raise CalibrationError(f"scores and correct must be non-empty 1-D arrays of equal length, got {s.shape}, {c.shape}")
    if not np.isfinite(s).all():
        raise CalibrationError("scores must be finite")
    alpha = 1.0 - float(target)
    level = float(delta) / STARTS
    n_min = min_confident_for(target, level)

    order = np.argsort(s, kind="mergesort")
    ss, cc = s[order], c[order]
    # threshold candidates: each distinct score u_i, confident set {score < u_i}; then "everything"
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    sizes = np.r_[starts[1:], ss.size]  # (m,) confident-set size for each candidate threshold
    thresholds = np.r_[ss[starts[1:]], np.nextafter(ss[-1], np.inf)]  # (m,)
    wrong = np.r_[0, np.cumsum(~cc)][sizes]  # (m,) wrong answers in each set
    bounds = clopper_pearson_upper(wrong, sizes, level)  # (m,)
    passed = bounds <= alpha + 1e-12
    best = -1
    first_tested = None
    for j in range(STARTS):
        begin = int(np.searchsorted(sizes, n_min * 2**j))  # first candidate with >= n_min * 2^j answers
        if begin >= sizes.size:
            break
        first_tested = begin if first_tested is None else first_tested
        fails = np.flatnonzero(~passed[begin:])
        end = begin + (int(fails[0]) if fails.size else sizes.size - begin)  # walk stops at its first failure
        if end > begin:
            best = max(best, end - 1)
    if first_tested is None:
        return GuaranteeResult(None, float(target), float(delta), 0, 0, None, note=(
            f"guaranteed_precision: {s.size} calibration answers, but certifying precision {target:g} at "
            f"delta {delta:g} needs at least {n_min} confident ones; nothing is marked confident"))
    if best < 0:
        return GuaranteeResult(None, float(target), float(delta), 0, 0, None, note=(
            f"guaranteed_precision: no walk passes its first step (from {int(sizes[first_tested])} answers, "
            f"{int(wrong[first_tested])} wrong: error bound {bounds[first_tested]:.3f} > {alpha:.3g}); precision "
            f"{target:g} cannot be certified at delta {delta:g}; nothing is marked confident"))
    note = None
    if best == sizes.size - 1:
        note = ("guaranteed_precision: every calibration answer is confident; the model's accuracy alone "
                "meets the target")
    return GuaranteeResult(float(thresholds[best]), float(target), float(delta), int(sizes[best]),
                           int(wrong[best]), float(bounds[best]), note=note)
