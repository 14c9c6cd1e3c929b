"""Input novelty: how far an input's pooled hidden states lie from those the calibration saw.

The guard's verdict is only as good as the match between new inputs and the calibration
data. A grayscale scene, pure noise or a question the model's world never asks can still
produce a confident-looking map and a likely token, so novelty is measured directly on
the model's representation of the input:

- features ``x`` (``F,``): pooled last hidden states of the prompt (mean of the image
  tokens, mean of the text tokens, and the state of the position that predicts the
  first answer token), concatenated;
- a probabilistic-PCA Gaussian fitted on the calibration's fitting split: mean ``mu``,
  the top ``k`` principal directions ``V`` (``k, F``) with variances ``lam`` (``k,``), and
  one shared variance ``sigma2`` for the remaining directions;
- distance ``d(x) = sqrt((sum_i z_i^2 / lam_i + |r|^2 / sigma2) / F)``, with
  ``z = V (x - mu)`` and ``r`` the residual outside the top ``k`` directions. It is a
  Mahalanobis distance under that Gaussian, divided by the dimension so that typical
  in-distribution inputs score about 1 whatever ``F`` is.

Higher = more novel = less reason to trust a verdict fitted on the calibration data.
Only ``(k + 2) * F`` numbers are stored, so it stays small for wide models.
This module is pure (numpy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fastrm_common.errors import CalibrationError

__all__ = ["NoveltyModel"]


@dataclass(frozen=True)
class NoveltyModel:
    """A fitted PPCA Gaussian over pooled hidden states; :meth:`distance` scores one input."""

    mean: np.ndarray  # (F,)
    components: np.ndarray  # (k, F), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_variance: float

    @classmethod
    def fit(cls, features: Any, rank: int = 32) -> NoveltyModel:
        """Fit on ``features`` of shape ``(n, F)`` (the fitting split's inputs)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 3:
            raise CalibrationError(f"novelty needs features of shape (n >= 3, F), got {x.shape}")
        if not np.isfinite(x).all():
            raise CalibrationError("novelty features contain NaN or infinite values")
        n, f = x.shape
        mu = x.mean(axis=0)
        xc = x - mu  # (n, F)
        _, sv, vt = np.linalg.svd(xc, full_matrices=False)  # sv (min(n,F),), vt (min(n,F), F)
        eig = sv**2 / (n - 1)
        k = int(max(1, min(rank, eig.size - 1, f - 1)))
        total = float(np.sum(xc**2) / (n - 1))
        rest = max(total - float(eig[:k].sum()), 0.0) / max(f - k, 1)
        floor = 1e-6 * max(total / f, 1e-12)
        return cls(mu, vt[:k].copy(), np.maximum(eig[:k], floor), float(max(rest, floor)))

    def distance(self, x: Any) -> float:
        """Novelty of one input's features ``(F,)``; about 1 for typical calibration inputs."""
        v = np.asarray(x, dtype=np.float64)
        if v.shape != self.mean.shape:
            raise CalibrationError(f"novelty features have shape {v.shape}; the calibration expects {self.mean.shape}")
        d = v - self.mean
        z = self.components @ d  # (k,)
        resid = d - self.components.T @ z  # (F,)
        m2 = float(np.sum(z**2 / self.variances) + np.sum(resid**2) / self.residual_variance)
        return float(np.sqrt(m2 / self.mean.size))

    def to_params(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "components": self.components.tolist(),
                "variances": self.variances.tolist(), "residual_variance": self.residual_variance}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> NoveltyModel:
        try:
            mean = np.asarray(params["mean"], dtype=np.float64)
            comps = np.asarray(params["components"], dtype=np.float64)
            var = np.asarray(params["variances"], dtype=np.float64)
            rv = float(params["residual_variance"])
        except KeyError as exc:
            raise CalibrationError(f"score novelty is missing its fitted parameter {exc.args[0]!r}; "
                                   "fit it with fit_score('novelty', ...)") from None
        if mean.ndim != 1 or comps.ndim != 2 or comps.shape[1] != mean.size or var.shape != (comps.shape[0],):
            raise CalibrationError("score novelty: inconsistent shapes of mean / components / variances")
        if (var <= 0).any() or rv <= 0:
            raise CalibrationError("score novelty: variances must be positive")
        return cls(mean, comps, var, rv)
