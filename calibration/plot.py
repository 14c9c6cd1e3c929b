"""A Figure-9-style plot of a calibration: both score densities, histograms and the threshold.

Uses matplotlib's object API with the Agg canvas, so it never touches the global
backend or needs a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from calibration.artifact import Calibration
from calibration.fit import check_pair, evaluate_threshold

__all__ = ["plot_calibration", "plot_risk_coverage"]

_CORRECT_COLOR = "#2a9d8f"
_WRONG_COLOR = "#e76f51"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def plot_calibration(
    cal: Calibration,
    scores: Any,
    correct: Any,
    path: str | Path,
    *,
    title: str | None = None,
    bins: int = 30,
    dpi: int = 120,
) -> Path:
    """Draw the two KDEs (prior-weighted, as the density-crossing rule sees them), the
    histograms of the scores of correct and wrong answers, and the threshold.

    Args:
        cal: the fitted calibration (its ``kde`` curves and threshold are drawn).
        scores, correct: shape ``(n,)``, the answers to histogram (usually the
            held-out ones; the metrics in the legend are computed on them).
        path: output image file; the format follows the suffix (``.png``, ``.svg``, ``.pdf``).
        title: figure title (default: the rule and aggregation).

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    s, c = check_pair(scores, correct, "plot data")
    m = evaluate_threshold(s, c, cal.threshold)
    kde = cal.kde
    xs = np.asarray(kde.xs)  # (G,)
    prior = kde.prior_correct

    fig = Figure(figsize=(7.0, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    edges = np.histogram_bin_edges(np.r_[s, xs[[0, -1]]], bins=bins)
    # histograms scaled like the weighted KDEs: each class's bar areas sum to its share
    for mask, color, label in ((c, _CORRECT_COLOR, "correct"), (~c, _WRONG_COLOR, "wrong")):
        if mask.any():
            ax.hist(
                s[mask],
                bins=edges,
                weights=np.full(int(mask.sum()), 1.0 / (s.shape[0] * np.diff(edges)[0])),
                color=color,
                alpha=0.30,
                label=f"{label} answers (n={int(mask.sum())})",
            )
    ax.plot(xs, prior * np.asarray(kde.density_correct), color=_CORRECT_COLOR, lw=2, label="KDE correct")
    ax.plot(xs, (1 - prior) * np.asarray(kde.density_wrong), color=_WRONG_COLOR, lw=2, label="KDE wrong")
    if cal.threshold is not None:  # None: a refused guarantee, nothing is confident
        ax.axvline(
            cal.threshold,
            color="black",
            ls="--",
            lw=1.5,
            label=(
                f"threshold {cal.threshold:.3g}: {_pct(m.share_confident)} confident, "
                f"precision {_pct(m.precision_confident)}"
            ),
        )
    if cal.score.name == "map_entropy":
        ax.set_xlabel("answer score (map entropy, " + ("normalised" if cal.entropy_normalized else "nats") + ")")
    else:
        ax.set_xlabel(f"answer score ({cal.score.label}; higher = more uncertain)")
    ax.set_ylabel("density × class share")
    auroc = "n/a" if m.auroc is None else f"{m.auroc:.3f}"
    ax.set_title(title or f"{cal.rule} ({cal.score.label}), AUROC {auroc}", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path


def plot_risk_coverage(curves: dict[str, tuple[Any, Any]], path: str | Path, *, title: str | None = None,
                       dpi: int = 120) -> Path:
    """Risk-coverage curves: for each score (label -> (scores, wrong)), the error rate of the answers
    kept when the most uncertain are rejected first, against the share kept (coverage). Lower is
    better; the area under a curve is what lm-polygraph's PRR compares with chance and the oracle."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    base = None
    for label, (scores, wrong) in curves.items():
        scores, wrong = np.asarray(scores, dtype=float), np.asarray(wrong, dtype=float)
        if wrong.size == 0:
            continue
        order = np.argsort(scores, kind="stable")  # most certain first
        kept = wrong[order]
        n = len(kept)
        risk = np.cumsum(kept) / np.arange(1, n + 1)
        ax.plot(np.arange(1, n + 1) / n, risk, label=label, linewidth=1.2)
        base = float(wrong.mean())
    if base is not None:
        ax.axhline(base, color="grey", linestyle=":", linewidth=1, label="chance (keep all)")
    ax.set_xlabel("coverage (share of answers kept)")
    ax.set_ylabel("risk (error rate of the kept answers)")
    ax.set_title(title or "risk-coverage of each score (held-out answers)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_xlim(0, 1)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    return path
