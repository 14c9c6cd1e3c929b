"""Evaluation metrics of a relevancy method: pure functions over arrays, no model, no I/O.

* :func:`confusion_counts` / :func:`classification_scores`: the proxy's probabilities
  against the binarised baseline, per patch, pooled over tokens, at several thresholds
  (the FastRM paper's Table 1: accuracy and F1 at 0.5); :func:`f1_interval`: how far that
  pooled F1 could move on another sample of records (a bootstrap interval);
* :func:`removal_masks` and :func:`curve_auc`: perturbation curves (which patches to remove
  for a ranking, and the normalised area under an accuracy curve);
* :func:`mask_to_grid` and :func:`pointing`: the pointing game and the mask mass on an
  evidence mask;
* :func:`correlations`: Pearson and Spearman between two maps.

Conventions: a map is a flat (N,) array of non-negative relevance (higher = more relevant)
in row-major patch order; a grid-shaped (rows, cols) array is flattened.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_FRACTIONS",
    "DEFAULT_THRESHOLDS",
    "binarize_maps",
    "classification_scores",
    "confusion_counts",
    "correlations",
    "curve_auc",
    "f1_interval",
    "mask_to_grid",
    "pointing",
    "rank_patches",
    "removal_masks",
    "trivial_baselines",
]

DEFAULT_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
DEFAULT_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def confusion_counts(probs: np.ndarray, labels: np.ndarray, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> np.ndarray:
    """Per-threshold confusion counts, (K, 4) int64 columns ``tp, fp, fn, tn``.

    ``probs`` (..., N) in [0, 1], ``labels`` (..., N) bool; a patch is predicted relevant when
    ``probs >= threshold``. Counts add up over tokens and records, so pool them before scoring.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    if probs.shape != labels.shape:
        raise ValueError(f"probs and labels differ in size: {probs.size} vs {labels.size}")
    out = np.zeros((len(thresholds), 4), dtype=np.int64)
    for k, thr in enumerate(thresholds):
        pred = probs >= thr
        out[k] = [np.sum(pred & labels), np.sum(pred & ~labels), np.sum(~pred & labels), np.sum(~pred & ~labels)]
    return out


def _f1(counts: np.ndarray) -> np.ndarray:
    """F1 of ``(..., 4)`` ``tp, fp, fn, tn`` counts, shape ``(...)``; 0.0 where undefined."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    denom = 2 * tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros(tp.shape, dtype=np.float64), where=denom > 0)


def classification_scores(counts: np.ndarray) -> list[dict]:
    """Accuracy, precision, recall and F1 from (K, 4) ``tp, fp, fn, tn`` counts; one dict per row.

    Undefined ratios (no predicted or no true positive) are 0.0, as in scikit-learn's
    ``zero_division=0``.

    >>> classification_scores(np.array([[2, 1, 1, 6]]))[0]["f1"]
    0.6667
    """
    counts = np.asarray(counts, dtype=np.int64).reshape(-1, 4)
    rows = []
    for (tp, fp, fn, tn), f1 in zip(counts, _f1(counts)):
        total = tp + fp + fn + tn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        rows.append({
            "accuracy": round(float((tp + tn) / total), 4) if total else 0.0,
            "precision": round(float(precision), 4),
            "recall": round(float(recall), 4),
            "f1": round(float(f1), 4),
        })
    return rows


def trivial_baselines(counts: np.ndarray) -> dict:
    """The label positive rate of pooled ``tp, fp, fn, tn`` counts (4,) and what constant maps score there.

    A map that calls every patch relevant ("all positive") has recall 1, precision = the positive
    rate p, so F1 = 2p / (1 + p); one that calls none ("all negative") has accuracy 1 - p and F1 0.
    A proxy's F1 or accuracy means something only beside these.

    >>> trivial_baselines(np.array([3, 1, 5, 1]))["all_positive"]["f1"]   # 8 of 10 patches positive
    0.8889
    """
    tp, fp, fn, tn = (int(x) for x in np.asarray(counts, dtype=np.int64).reshape(4))
    total = tp + fp + fn + tn
    p = (tp + fn) / total if total else 0.0
    return {
        "positive_rate": round(p, 4),
        "all_positive": {"accuracy": round(p, 4), "precision": round(p, 4), "recall": 1.0 if p else 0.0,
                         "f1": round(2 * p / (1 + p), 4)},
        "all_negative": {"accuracy": round(1 - p, 4), "precision": 0.0, "recall": 0.0, "f1": 0.0},
    }


def f1_interval(record_counts: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> np.ndarray:
    """Percentile bootstrap interval of the pooled F1, resampling whole records: (K, 2) ``lo, hi``.

    ``record_counts`` (R, K, 4) holds each record's ``tp, fp, fn, tn`` counts at K thresholds
    (:func:`confusion_counts` per record). Each of ``n_boot`` resamples draws R records with
    replacement, pools their counts and scores F1; the interval is the central ``level`` share
    of those F1s. Records, not patches, are resampled: the patches of one map are not
    independent draws. Deterministic from ``seed``.

    >>> counts = np.array([[[5, 1, 1, 93]], [[3, 2, 0, 95]], [[4, 0, 2, 94]]])
    >>> lo, hi = f1_interval(counts, n_boot=200)[0]
    >>> bool(lo <= classification_scores(counts.sum(0))[0]["f1"] <= hi)
    True
    """
    counts = np.asarray(record_counts, dtype=np.int64)
    if counts.ndim != 3 or counts.shape[-1] != 4 or counts.shape[0] < 1:
        raise ValueError(f"record_counts must be (R >= 1, K, 4), got shape {counts.shape}")
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < level < 1, got {n_boot} and {level}")
    n_records, n_thresholds, _ = counts.shape
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(n_records, np.full(n_records, 1.0 / n_records), size=n_boot)  # (n_boot, R)
    pooled = (weights @ counts.reshape(n_records, -1)).reshape(n_boot, n_thresholds, 4)
    f1 = _f1(pooled)  # (n_boot, K)
    tail = (1 - level) / 2
    return np.quantile(f1, [tail, 1 - tail], axis=0).T  # (K, 2)


def curve_auc(fractions: Sequence[float], values: Sequence[float]) -> float:
    """Area under a perturbation curve by the trapezoid rule, divided by the fraction span.

    The result is the curve's mean height, in the units of ``values`` (accuracy in [0, 1]), so
    curves over different ranges compare. Positive perturbation: lower = the method found the
    patches the answer needs. Negative perturbation: higher = better.

    >>> curve_auc([0.0, 0.5], [1.0, 0.0])
    0.5
    """
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.shape != y.shape or x.size < 2:
        raise ValueError("curve_auc needs two equally long sequences of at least 2 points")
    span = x[-1] - x[0]
    if span <= 0:
        raise ValueError("fractions must increase")
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(span)


def rank_patches(rel_map: np.ndarray) -> np.ndarray:
    """Patch indices from most to least relevant (ties keep row-major order), (N,) int64."""
    flat = np.asarray(rel_map, dtype=np.float64).reshape(-1)
    return np.argsort(-flat, kind="stable")


def removal_masks(order: np.ndarray, fractions: Sequence[float], positive: bool = True) -> np.ndarray:
    """Which patches to remove at each fraction, (F, N) bool.

    ``order``: patch indices from most to least relevant (:func:`rank_patches`). Positive
    perturbation removes the ``round(f N)`` most relevant patches, negative the least relevant.
    """
    order = np.asarray(order, dtype=np.int64)
    n = order.size
    ranked = order if positive else order[::-1]
    masks = np.zeros((len(fractions), n), dtype=bool)
    for i, f in enumerate(fractions):
        if not 0 <= f <= 1:
            raise ValueError(f"fractions must be in [0, 1], got {f}")
        masks[i, ranked[: int(round(f * n))]] = True
    return masks


def mask_to_grid(mask: np.ndarray, grid: tuple[int, int], coverage: float = 0.3) -> np.ndarray:
    """A pixel mask (H, W) -> patch mask (rows, cols) bool.

    A patch belongs to the mask when the mask covers at least ``coverage`` of its pixels
    (ShapesVQA's rule); when no patch reaches that share, the best-covered patch is kept, so a
    non-empty mask always owns at least one patch. The mask is area-resampled to a multiple of
    the grid first, so any image size works (the processor's resize is assumed to keep the
    whole image: square images, or a squash rather than a crop).
    """
    from PIL import Image

    mask = np.asarray(mask).astype(bool)
    rows, cols = grid
    h, w = mask.shape
    if h % rows or w % cols:
        scale = max(1, int(np.ceil(max(h / rows, w / cols))))
        img = Image.fromarray(mask.astype(np.uint8) * 255, mode="L").resize((cols * scale, rows * scale), Image.BOX)
        frac_px = np.asarray(img, dtype=np.float64) / 255.0
    else:
        frac_px = mask.astype(np.float64)
    ph, pw = frac_px.shape[0] // rows, frac_px.shape[1] // cols
    cov = frac_px.reshape(rows, ph, cols, pw).mean(axis=(1, 3))  # (rows, cols)
    out = cov >= coverage
    if not out.any() and cov.max() > 0:
        out.flat[int(cov.argmax())] = True
    return out


def pointing(rel_map: np.ndarray, target: np.ndarray) -> dict:
    """Pointing game of one map against a target patch mask (same size).

    Returns ``hit`` (the argmax patch is in the target; ties: the first in row-major order),
    ``mass`` (share of the map's non-negative mass on the target) and ``chance`` (the target's
    share of patches: the hit rate of a uniformly random argmax).

    >>> pointing(np.array([[0.1, 0.9], [0.0, 0.0]]), np.array([[False, True], [False, False]]))
    {'hit': True, 'mass': 0.9, 'chance': 0.25}
    """
    flat = np.clip(np.asarray(rel_map, dtype=np.float64).reshape(-1), 0, None)
    tgt = np.asarray(target, dtype=bool).reshape(-1)
    if flat.shape != tgt.shape:
        raise ValueError(f"map and target differ in size: {flat.size} vs {tgt.size}")
    total = flat.sum()
    return {
        "hit": bool(tgt[int(np.argmax(flat))]),
        "mass": round(float(flat[tgt].sum() / total), 6) if total > 0 else 0.0,
        "chance": round(float(tgt.mean()), 6),
    }


def correlations(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """``(pearson, spearman)`` between two maps of the same size; NaN when either is constant."""
    from scipy.stats import pearsonr, spearmanr

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"maps differ in size: {x.size} vs {y.size}")
    if x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan"), float("nan")
    return float(pearsonr(x, y)[0]), float(spearmanr(x, y)[0])


def binarize_maps(maps: "torch.Tensor", threshold: float = 0.3) -> "torch.Tensor":
    """Labels of continuous maps (..., N_img): ``m >= threshold * max(m)`` per map, all-zero maps -> 0.

    >>> import torch
    >>> binarize_maps(torch.tensor([[0.0, 0.2, 1.0, 0.3]]), 0.3).tolist()
    [[False, False, True, True]]
    """
    peak = maps.amax(dim=-1, keepdim=True)  # (..., 1)
    return (maps >= threshold * peak) & (peak > 0)
