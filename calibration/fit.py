"""Fitting an entropy threshold on labelled answers, and measuring what it does.

Inputs everywhere are two aligned 1-D arrays: ``scores`` (answer scores, higher = more
uncertain, see :mod:`calibration.scores`) and ``correct`` (booleans, or 0/1).

Threshold rules (the verdict is ``"confident"`` when ``score < threshold``):

``paper_midpoint`` (default, FastRM paper)
    the midpoint of the mean score of correct answers and that of wrong answers.
``density_crossing``
    where the prior-weighted class densities cross, ``π_c f_c(x) = π_w f_w(x)``
    (``f`` = Gaussian KDE, ``π`` = class shares), i.e. the Bayes decision boundary
    under the KDE model. Searched between the two class means, taking the crossing
    where correct answers dominate on the left; if several, the one nearest the
    midpoint. If none lies between the means (a large class can dominate there), the
    whole KDE grid is searched; if there is still none, the rule falls back to the
    midpoint and says so in a note.
``guaranteed_precision``
    the largest threshold whose precision among confident answers is *certified*: with
    probability at least ``1 - delta`` over the calibration sample, at least
    ``target_precision`` of new confident answers are right (a Clopper-Pearson bound
    scanned with fixed-sequence testing, Learn-then-Test; see
    :mod:`calibration.guarantee`). When the target cannot be certified it says so in a
    note and marks nothing confident (threshold ``None``). It replaces the heuristic
    ``target_precision`` rule of version-1 files (which still load).

Every rule is evaluated on the fitting data and, when given, on held-out data; only
held-out numbers estimate what the threshold will do on new answers from the same
distribution.

This module is pure: arrays in, pydantic models out, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from scipy.stats import gaussian_kde

from calibration.artifact import RULES, Calibration, KDECurves, Rule, RuleResult, ScoreSpec, ThresholdMetrics
from calibration.guarantee import guaranteed_threshold
from calibration.scores import AGGREGATIONS, Aggregation
from fastrm_common.errors import CalibrationError

__all__ = [
    "DEFAULT_MIN_PER_CLASS",
    "auroc",
    "evaluate_threshold",
    "fit_calibration",
    "split_fit_heldout",
]

DEFAULT_MIN_PER_CLASS = 5


# ---- input checks ----------------------------------------------------------------------


def _to_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def check_pair(scores: Any, correct: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``(scores, correct)`` -> float64 (n,), bool (n,)."""
    s = _to_array(scores)
    c = _to_array(correct)
    if s.ndim != 1 or c.ndim != 1:
        raise CalibrationError(
            f"{what}: scores and correct must be one-dimensional, got shapes {s.shape} and {c.shape}"
        )
    if s.shape[0] != c.shape[0]:
        raise CalibrationError(f"{what}: {s.shape[0]} scores but {c.shape[0]} correctness labels")
    if s.shape[0] == 0:
        raise CalibrationError(f"{what}: no answers")
    try:
        s = s.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what}: scores are not numeric ({exc})") from exc
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        first = int(np.flatnonzero(np.isnan(s))[0])
        raise CalibrationError(f"{what}: {n_nan} score(s) are NaN (first at index {first})")
    if np.isinf(s).any():
        first = int(np.flatnonzero(np.isinf(s))[0])
        raise CalibrationError(f"{what}: infinite score at index {first}")
    if c.dtype != bool:
        if c.dtype.kind not in "iuf" or not np.isin(c, (0, 1)).all():
            raise CalibrationError(f"{what}: correct must hold booleans or 0/1 values")
        c = c.astype(bool)
    return s, c


# ---- metrics ---------------------------------------------------------------------------


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``; tied values share the mean of their ranks."""
    n = x.shape[0]
    order = np.argsort(x, kind="mergesort")
    sx = x[order]
    new_group = np.r_[True, sx[1:] != sx[:-1]]  # (n,) True where a tie group starts
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], n]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = mean_rank[np.cumsum(new_group) - 1]
    return ranks


def auroc(scores: Any, positive: Any) -> float | None:
    """Area under the ROC curve of ``scores`` for detecting ``positive`` items.

    Equals the probability that a random positive scores higher than a random
    negative, ties counting one half (the Mann-Whitney U statistic over
    ``n_pos · n_neg``). 1 = perfect, 0.5 = chance, 0 = perfectly reversed.

    For calibration the positives are the **wrong** answers (higher score = more
    likely wrong): ``auroc(scores, ~correct)``.

    Returns:
        The AUROC, or ``None`` when there are no positives or no negatives.

    Example:
        >>> auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True])
        1.0
    """
    s, pos = check_pair(scores, positive, "auroc")
    n_pos = int(pos.sum())
    n_neg = s.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(s)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


def evaluate_threshold(scores: Any, correct: Any, threshold: float | None) -> ThresholdMetrics:
    """What ``threshold`` does on labelled answers.

    "Confident" = ``score < threshold`` is the positive class of the confusion counts:
    ``tp`` confident & correct, ``fp`` confident & wrong, ``tn`` uncertain & wrong,
    ``fn`` uncertain & correct.

    Returns:
        :class:`ThresholdMetrics` with the share below the threshold, the precision of
        "confident" (``tp / (tp + fp)``) and of "uncertain" (``tn / (tn + fn)``), the
        recall of correct answers, the model's accuracy, and the AUROC of the score for
        predicting wrong answers (threshold-free). ``threshold=None`` (a refused
        guarantee) marks nothing confident.

    Example:
        >>> m = evaluate_threshold([0.1, 0.2, 0.6, 0.9], [True, True, True, False], 0.5)
        >>> (m.tp, m.fp, m.tn, m.fn, m.precision_confident)
        (2, 0, 1, 1, 1.0)
    """
    s, c = check_pair(scores, correct, "evaluate_threshold")
    if threshold is None:  # a refused guarantee: nothing is confident
        t = None
        confident = np.zeros(s.shape, dtype=bool)
    else:
        t = float(threshold)
        if not np.isfinite(t):
            raise CalibrationError(f"threshold must be finite, got {threshold!r}")
        confident = s < t  # (n,)
    tp = int((confident & c).sum())
    fp = int((confident & ~c).sum())
    tn = int((~confident & ~c).sum())
    fn = int((~confident & c).sum())
    n = s.shape[0]
    return ThresholdMetrics(
        threshold=t,
        n=n,
        n_correct=tp + fn,
        n_wrong=fp + tn,
        accuracy=(tp + fn) / n,
        auroc=auroc(s, ~c),
        share_confident=(tp + fp) / n,
        precision_confident=_ratio(tp, tp + fp),
        precision_uncertain=_ratio(tn, tn + fn),
        recall_confident=_ratio(tp, tp + fn),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )


# ---- split -----------------------------------------------------------------------------


def split_fit_heldout(
    n: int,
    fit_fraction: float = 0.5,
    seed: int = 0,
    *,
    stratify: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic random split of ``range(n)`` into fitting and held-out indices.

    Args:
        n: number of items (at least 2).
        fit_fraction: share of items used for fitting, strictly between 0 and 1.
        seed: the same ``(n, fit_fraction, seed, stratify)`` always gives the same split.
        stratify: optional labels, shape ``(n,)`` (e.g. correctness); each label
            value is split in the same proportion.

    Returns:
        ``(fit_idx, heldout_idx)``: sorted int64 arrays, disjoint, covering ``range(n)``,
        both non-empty.

    Example:
        >>> fit, held = split_fit_heldout(10, 0.5, seed=1)
        >>> len(fit), len(held), sorted([*fit, *held]) == list(range(10))
        (5, 5, True)
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise CalibrationError(f"cannot split {n!r} items into fitting and held-out parts; need at least 2")
    if not 0.0 < float(fit_fraction) < 1.0:
        raise CalibrationError(f"fit_fraction must be strictly between 0 and 1, got {fit_fraction!r}")
    rng = np.random.default_rng(seed)
    if stratify is None:
        groups = [np.arange(n)]
    else:
        labels = _to_array(stratify)
        if labels.shape != (n,):
            raise CalibrationError(f"stratify must have shape ({n},), got {labels.shape}")
        groups = [np.flatnonzero(labels == value) for value in np.unique(labels)]
    fit_parts, held_parts = [], []
    for idx in groups:
        perm = rng.permutation(idx)
        k = int(round(len(idx) * float(fit_fraction)))
        fit_parts.append(perm[:k])
        held_parts.append(perm[k:])
    fit_idx = np.sort(np.concatenate(fit_parts)).astype(np.int64)
    held_idx = np.sort(np.concatenate(held_parts)).astype(np.int64)
    if fit_idx.size == 0 or held_idx.size == 0:
        # tiny n: move one item so both parts exist, deterministically
        both = np.sort(np.concatenate([fit_idx, held_idx]))
        perm = rng.permutation(both)
        k = min(max(int(round(n * float(fit_fraction))), 1), n - 1)
        fit_idx, held_idx = np.sort(perm[:k]), np.sort(perm[k:])
    return fit_idx, held_idx


# ---- threshold rules -------------------------------------------------------------------


def _crossings_down(f: Any, xs: np.ndarray) -> list[float]:
    """Points where ``f`` goes from positive to non-positive along ``xs`` (refined with brentq)."""
    from scipy.optimize import brentq  # scipy loads only when fitting (a second): ``import calibration`` stays light

    d = f(xs)  # (G,)
    out = []
    for i in np.flatnonzero((d[:-1] > 0) & (d[1:] <= 0)):
        if d[i + 1] == 0:
            out.append(float(xs[i + 1]))
        else:
            out.append(float(brentq(lambda x: float(f(np.atleast_1d(x))[0]), xs[i], xs[i + 1], xtol=1e-10)))
    return out


def _density_crossing(
    kde_c: gaussian_kde,
    kde_w: gaussian_kde,
    prior_c: float,
    mean_c: float,
    mean_w: float,
    lo: float,
    hi: float,
) -> tuple[float, str | None]:
    def diff(x: Any) -> Any:  # > 0 where correct answers dominate
        return prior_c * kde_c(x) - (1.0 - prior_c) * kde_w(x)

    mid = 0.5 * (mean_c + mean_w)
    a, b = min(mean_c, mean_w), max(mean_c, mean_w)
    if b > a:
        between = _crossings_down(diff, np.linspace(a, b, 1025))
        if between:
            return min(between, key=lambda x: abs(x - mid)), None
    anywhere = _crossings_down(diff, np.linspace(lo, hi, 4097))
    if anywhere:
        x = min(anywhere, key=lambda x: abs(x - mid))
        return x, (
            f"density_crossing: the prior-weighted densities do not cross between the class means "
            f"({mean_c:.4g}, {mean_w:.4g}); used the crossing at {x:.4g}"
        )
    return mid, (
        "density_crossing: the prior-weighted densities never cross from correct-dominated to "
        "wrong-dominated; fell back to the midpoint of the class means"
    )


def _too_few_message(n: int, n_c: int, n_w: int, need: int) -> str:
    """Which side of the fitting data is short, and what to do about it."""
    head = (f"the fitting data has {n_c} correct and {n_w} wrong answer(s) out of {n}; a threshold needs at "
            f"least {need} of each (one score density per side).")
    advice = []
    if n_c < need:
        advice.append(
            f"Too few correct answers ({n_c}): check that the labelled answers match how the model answers "
            "(the same words and format; a prompt suffix such as 'Answer with one word.' often helps), or "
            "use questions this model can answer; if it gets almost nothing right, its confidence cannot be "
            "calibrated on this data."
        )
    if n_w < need:
        advice.append(
            f"Too few wrong answers ({n_w}): add questions the model gets wrong (harder ones, or simply "
            "more of them)."
        )
    advice.append("A larger data set, or a larger fitting part of it, adds answers on both sides.")
    return " ".join([head, *advice])


# ---- fitting ---------------------------------------------------------------------------


def fit_calibration(
    scores: Any,
    correct: Any,
    rule: Rule = "paper_midpoint",
    *,
    target_precision: float = 0.98,
    delta: float = 0.1,
    score: ScoreSpec | None = None,
    aggregation: Aggregation = "mean",
    entropy_normalized: bool = True,
    heldout: tuple[Any, Any] | None = None,
    model_id: str | None = None,
    model_hash: str | None = None,
    proxy_id: str | None = None,
    proxy_hash: str | None = None,
    dataset_hash: str | None = None,
    command: str | None = None,
    metadata: Mapping[str, str | int | float | bool | None] | None = None,
    min_per_class: int = DEFAULT_MIN_PER_CLASS,
    grid_size: int = 256,
    bw_method: str | float | None = None,
) -> Calibration:
    """Fit a confidence threshold on answer scores labelled correct / wrong.

    A Gaussian KDE (``scipy.stats.gaussian_kde``, Scott's bandwidth unless
    ``bw_method`` says otherwise) is fitted to the scores of correct answers and to
    those of wrong answers; ``rule`` picks the threshold (see the module docstring).
    The other rules are fitted too and stored in ``alternatives``.

    Args:
        scores: shape ``(n,)``, answer scores (higher = more uncertain).
        correct: shape ``(n,)``, booleans or 0/1: was the answer right.
        rule: ``"paper_midpoint"``, ``"density_crossing"`` or ``"guaranteed_precision"``.
        target_precision: the precision ``guaranteed_precision`` certifies, in ``(0, 1)``.
        delta: the probability that the guarantee fails, in ``(0, 1)``.
        score: which score the scores are (name and parameters), recorded so the guard
            scores new answers the same way; default: ``map_entropy`` with
            ``aggregation`` and ``entropy_normalized``.
        aggregation, entropy_normalized: how map-entropy scores were made (kept for
            version-1 readers).
        heldout: optional ``(scores, correct)`` not used for fitting; every rule is
            evaluated on it.
        model_id, model_hash, proxy_id, proxy_hash, dataset_hash, command, metadata:
            identity and provenance recorded in the artifact.
        min_per_class: fewest correct and fewest wrong answers accepted (>= 2).
        grid_size: points of the KDE curves stored for plots.
        bw_method: passed to ``gaussian_kde``.

    Returns:
        A :class:`Calibration`.

    Raises:
        CalibrationError: mismatched lengths, NaN/infinite scores, fewer than
            ``min_per_class`` correct or wrong answers, constant scores (overall or
            within a class), an unknown rule or aggregation. A ``guaranteed_precision``
            rule that cannot certify its target is not an error: the calibration marks
            nothing confident and says so in ``notes``.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> s = np.r_[rng.normal(0.3, 0.05, 50), rng.normal(0.5, 0.05, 50)]
        >>> ok = np.r_[np.ones(50, bool), np.zeros(50, bool)]
        >>> cal = fit_calibration(s, ok)
        >>> round(cal.threshold, 1), cal.verdict(0.2)
        (0.4, 'confident')
    """
    if rule not in RULES:
        raise CalibrationError(f"unknown rule {rule!r}; expected one of: {', '.join(RULES)}")
    if aggregation not in AGGREGATIONS:
        raise CalibrationError(f"unknown aggregation {aggregation!r}; expected one of: {', '.join(AGGREGATIONS)}")
    if not 0.0 < float(target_precision) < 1.0:
        raise CalibrationError(f"target_precision must be strictly between 0 and 1, got {target_precision!r}")
    if not 0.0 < float(delta) < 1.0:
        raise CalibrationError(f"delta must be strictly between 0 and 1, got {delta!r}")
    if int(min_per_class) < 2:
        raise CalibrationError(f"min_per_class must be at least 2 (a KDE needs two points), got {min_per_class!r}")
    if int(grid_size) < 2:
        raise CalibrationError(f"grid_size must be at least 2, got {grid_size!r}")

    s, c = check_pair(scores, correct, "fitting data")
    n = s.shape[0]
    n_c, n_w = int(c.sum()), int((~c).sum())
    if n_c < min_per_class or n_w < min_per_class:
        raise CalibrationError(_too_few_message(n, n_c, n_w, int(min_per_class)))
    if np.ptp(s) == 0:
        raise CalibrationError(f"all {n} scores are equal ({s[0]:.6g}); they carry no signal to threshold")
    for name, mask in (("correct", c), ("wrong", ~c)):
        if np.ptp(s[mask]) == 0:
            raise CalibrationError(
                f"the scores of all {int(mask.sum())} {name} answers are equal ({s[mask][0]:.6g}); "
                "a density cannot be estimated from them"
            )
    held: tuple[np.ndarray, np.ndarray] | None = None
    if heldout is not None:
        if not isinstance(heldout, (tuple, list)) or len(heldout) != 2:
            raise CalibrationError("heldout must be a pair (scores, correct)")
        held = check_pair(heldout[0], heldout[1], "held-out data")

    from scipy.stats import gaussian_kde  # only when fitting (see _crossings_down)

    s_c, s_w = s[c], s[~c]  # (n_c,), (n_w,)
    try:
        kde_c = gaussian_kde(s_c, bw_method=bw_method)
        kde_w = gaussian_kde(s_w, bw_method=bw_method)
    except (np.linalg.LinAlgError, ValueError) as exc:
        raise CalibrationError(f"cannot fit the score densities: {exc}") from exc
    bw_c = float(np.sqrt(kde_c.covariance[0, 0]))
    bw_w = float(np.sqrt(kde_w.covariance[0, 0]))
    mean_c, mean_w = float(s_c.mean()), float(s_w.mean())
    prior_c = n_c / n
    pad = 3.0 * max(bw_c, bw_w)
    lo, hi = float(s.min() - pad), float(s.max() + pad)
    xs = np.linspace(lo, hi, int(grid_size))  # (G,)

    notes: list[str] = []
    if mean_c >= mean_w:
        notes.append(
            f"correct answers do not score lower than wrong ones (means {mean_c:.4g} vs {mean_w:.4g}); "
            "the score does not separate them on this data and verdicts will not be informative"
        )
    if held is None:
        notes.append("no held-out data: all metrics are on the fitting data and are optimistic")

    results: dict[str, RuleResult] = {}
    for r in RULES:
        note: str | None = None
        if r == "paper_midpoint":
            t: float | None = 0.5 * (mean_c + mean_w)
        elif r == "density_crossing":
            t, note = _density_crossing(kde_c, kde_w, prior_c, mean_c, mean_w, lo, hi)
        else:
            g = guaranteed_threshold(s, c, float(target_precision), float(delta))
            t, note = g.threshold, g.note
            guarantee = g
        guaranteed = r == "guaranteed_precision"
        results[r] = RuleResult(
            rule=r,
            threshold=t,
            target_precision=float(target_precision) if guaranteed else None,
            delta=float(delta) if guaranteed else None,
            guarantee=guarantee.statement() if guaranteed else None,
            fit_metrics=evaluate_threshold(s, c, t),
            heldout_metrics=evaluate_threshold(*held, t) if held is not None else None,
            note=note,
        )

    chosen = results[rule]
    if chosen.note:
        notes.append(chosen.note)
    if score is None:
        score = ScoreSpec(name="map_entropy", params={"aggregation": aggregation, "normalized": bool(entropy_normalized)})

    return Calibration(
        model_id=model_id,
        model_hash=model_hash,
        proxy_id=proxy_id,
        proxy_hash=proxy_hash,
        dataset_hash=dataset_hash,
        rule=rule,
        threshold=chosen.threshold,
        target_precision=chosen.target_precision,
        delta=chosen.delta,
        guarantee=chosen.guarantee,
        score=score,
        aggregation=aggregation,
        entropy_normalized=bool(entropy_normalized),
        fit_metrics=chosen.fit_metrics,
        heldout_metrics=chosen.heldout_metrics,
        kde=KDECurves(
            xs=xs.tolist(),
            density_correct=kde_c(xs).tolist(),
            density_wrong=kde_w(xs).tolist(),
            prior_correct=prior_c,
            mean_correct=mean_c,
            mean_wrong=mean_w,
            std_correct=float(s_c.std()),
            std_wrong=float(s_w.std()),
            bandwidth_correct=bw_c,
            bandwidth_wrong=bw_w,
        ),
        alternatives={r: res for r, res in results.items() if r != rule},
        notes=notes,
        command=command,
        metadata=dict(metadata or {}),
    )
