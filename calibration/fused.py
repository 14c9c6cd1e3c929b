"""The fused score: a small logistic regression over standardised base scores.

``fused(x) = b + w . ((x - m) / s)`` is the log-odds that an answer is wrong, given its
base scores ``x`` (``k,``), with ``m`` and ``s`` the base scores' means and standard
deviations on the fitting split. Fitted by Newton's method (iteratively reweighted least
squares) with an L2 penalty ``l2 * |w|^2 / 2`` on the weights (not the intercept), from
zeros: the fit is deterministic, and ``seed`` only orders the rows, so the same data and
seed always give the same coefficients. Higher = more uncertain, like every score.

Fit it on the fitting split only (``guardrail calibrate`` does): held-out answers must
not shape the score whose held-out figures are reported. This module is pure (numpy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from fastrm_common.errors import CalibrationError

__all__ = ["DEFAULT_BASES", "FusedModel"]

#: base scores of ``fused`` unless told otherwise: the maps, the language signals, and novelty
DEFAULT_BASES: tuple[dict[str, Any], ...] = (
    {"name": "map_entropy", "params": {"aggregation": "mean", "normalized": True}},
    {"name": "token_nll", "params": {"aggregation": "max"}},
    {"name": "token_nll", "params": {"aggregation": "mean"}},
    {"name": "predictive_entropy", "params": {"aggregation": "max"}},
    {"name": "low_margin", "params": {"aggregation": "max"}},
)


@dataclass(frozen=True)
class FusedModel:
    """Coefficients and feature statistics of a fitted fused score."""

    bases: list[dict[str, Any]]
    center: np.ndarray  # (k,)
    scale: np.ndarray  # (k,)
    weights: np.ndarray  # (k,)
    intercept: float
    l2: float = 1.0
    seed: int = 0
    n_fit: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(cls, x: Any, wrong: Any, *, bases: Sequence[dict[str, Any]], l2: float = 1.0, seed: int = 0,
            max_iter: int = 100) -> FusedModel:
        """Fit on base scores ``x`` (n, k) and labels ``wrong`` (n,) (True = the answer was wrong)."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(wrong, dtype=bool)
        if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] != len(bases):
            raise CalibrationError(f"fused: base scores of shape {x.shape} do not match {len(bases)} bases and {y.shape[0]} labels")
        if y.all() or not y.any():
            raise CalibrationError("fused: the fitting split needs both right and wrong answers")
        order = np.random.default_rng(seed).permutation(x.shape[0])
        x, y = x[order], y[order].astype(np.float64)
        center = x.mean(axis=0)
        scale = x.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        z = np.c_[np.ones(x.shape[0]), (x - center) / scale]  # (n, k+1)
        beta = np.zeros(z.shape[1])
        penalty = np.r_[0.0, np.full(z.shape[1] - 1, float(l2))]
        for _ in range(max_iter):
            p = 1.0 / (1.0 + np.exp(-(z @ beta)))
            grad = z.T @ (p - y) + penalty * beta
            hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(penalty) + 1e-9 * np.eye(z.shape[1])
            step = np.linalg.solve(hess, grad)
            beta -= step
            if np.max(np.abs(step)) < 1e-10:
                break
        return cls(list(bases), center, scale, beta[1:].copy(), float(beta[0]), float(l2), int(seed), int(x.shape[0]))

    def log_odds(self, x: Any) -> float:
        """Log-odds of a wrong answer for one answer's base scores ``(k,)``."""
        v = np.asarray(x, dtype=np.float64)
        return float(self.intercept + self.weights @ ((v - self.center) / self.scale))

    def to_params(self) -> dict[str, Any]:
        return {"bases": self.bases, "center": self.center.tolist(), "scale": self.scale.tolist(),
                "weights": self.weights.tolist(), "intercept": self.intercept, "l2": self.l2, "seed": self.seed,
                "n_fit": self.n_fit}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> FusedModel:
        try:
            bases = [dict(b) for b in params["bases"]]
            center = np.asarray(params["center"], dtype=np.float64)
            scale = np.asarray(params["scale"], dtype=np.float64)
            weights = np.asarray(params["weights"], dtype=np.float64)
            intercept = float(params["intercept"])
        except KeyError as exc:
            raise CalibrationError(f"score fused is missing its fitted parameter {exc.args[0]!r}; "
                                   "fit it with fit_score('fused', ...)") from None
        k = len(bases)
        if center.shape != (k,) or scale.shape != (k,) or weights.shape != (k,) or (scale <= 0).any():
            raise CalibrationError(f"score fused: coefficients do not match its {k} bases")
        return cls(bases, center, scale, weights, intercept, float(params.get("l2", 1.0)),
                   int(params.get("seed", 0)), int(params.get("n_fit", 0)))
