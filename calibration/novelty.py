"""Input novelty: how far an input's pooled hidden states lie from those the calibration saw.

The guard's verdict is only as good as the match between new inputs and the calibration
data. A grayscale scene, pure noise or a question the model's world never asks can still
produce a confident-looking map and a likely token, so novelty is measured directly on
the model's representation of the input.

Features ``x`` (``F,``) are the prompt's pooled hidden states, in named blocks
(:data:`fastrm_common.prompt_features.PROMPT_FEATURE_BLOCKS`). A **view** is a set of
blocks; the default views are

- ``image``: the image tokens' mean and spread (per-dimension standard deviation over
  the patches) after the final norm. The spread matters: removing colour or resolution
  changes a few object patches a lot and the mean over all patches little;
- ``question``: the text tokens' mean entering the first decoder layer (which words
  were asked).

Each view gets a probabilistic-PCA Gaussian (:class:`NoveltyModel`) fitted on one part of
the calibration's fitting split: mean ``mu``, the top ``k`` principal directions ``V``
(``k, F_v``) with variances ``lam`` (``k,``), and one shared variance ``sigma2`` for the
remaining directions; its distance is ``d(x) = sqrt((sum_i z_i^2 / lam_i + |r|^2 / sigma2) / F_v)``
with ``z = V (x - mu)`` and ``r`` the residual outside the top ``k`` directions (a
Mahalanobis distance under that Gaussian, divided by the dimension). On the other part
(the reference inputs, never used by the Gaussians) each view's distance is divided by
its ``quantile`` (e.g. 0.995) there, and the novelty is the largest of these ratios
(:class:`ViewsNovelty`): about 1 at the edge of the calibration inputs on the view that
is most surprised, whatever the views' dimensions. One view that sees a change is enough;
views that are pooled together into one Gaussian dilute it.

Higher = more novel = less reason to trust a verdict fitted on the calibration data.
Only ``(k + 2) * F_v`` numbers are stored per view, as base64 float32. This module is pure (numpy).
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fastrm_common.errors import CalibrationError
from fastrm_common.prompt_features import PROMPT_FEATURE_BLOCKS, feature_columns

__all__ = ["DEFAULT_VIEWS", "NoveltyModel", "NoveltyView", "ViewsNovelty", "pack_array", "unpack_array"]

#: the default views: name -> feature blocks (see the module docstring)
DEFAULT_VIEWS: dict[str, tuple[str, ...]] = {
    "image": ("image_mean", "image_std"),
    "question": ("text_input_mean",),
}


def pack_array(a: Any) -> dict[str, Any]:
    """An array as JSON: ``{"shape": [...], "float32": "<base64 of little-endian float32>"}``.

    Four bytes per number instead of about twenty as a decimal list; float32 keeps seven
    significant digits, far below the sampling noise of statistics fitted on thousands of inputs.
    """
    arr = np.asarray(a, dtype="<f4")
    return {"shape": list(arr.shape), "float32": base64.b64encode(arr.tobytes()).decode("ascii")}


def unpack_array(v: Any, what: str = "array") -> np.ndarray:
    """The inverse of :func:`pack_array` (float64); plain nested lists are read too (older files)."""
    if isinstance(v, Mapping):
        try:
            shape = [int(n) for n in v["shape"]]
            raw = base64.b64decode(str(v["float32"]), validate=True)
        except (KeyError, TypeError, ValueError) as exc:
            raise CalibrationError(f"{what}: expected {{'shape': [...], 'float32': base64}}, got keys "
                                   f"{sorted(v)}: {exc}") from None
        if any(n < 0 for n in shape) or len(raw) != 4 * int(np.prod(shape, dtype=np.int64)):
            raise CalibrationError(f"{what}: {len(raw)} bytes do not hold float32 values of shape {shape}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(shape)
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"{what}: not an array of numbers: {exc}") from None


@dataclass(frozen=True)
class NoveltyModel:
    """A fitted PPCA Gaussian over features ``(F,)``; :meth:`distance` scores one input."""

    mean: np.ndarray  # (F,)
    components: np.ndarray  # (k, F), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_variance: float

    @classmethod
    def fit(cls, features: Any, rank: int = 64) -> NoveltyModel:
        """Fit on ``features`` of shape ``(n, F)``; ``rank`` is capped at ``n - 2`` and ``F - 1``."""
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

    def distances(self, x: Any) -> np.ndarray:
        """Novelty of inputs ``(n, F)`` -> ``(n,)``; about 1 for typical inputs of the fitting data."""
        v = np.atleast_2d(np.asarray(x, dtype=np.float64))
        if v.shape[1:] != self.mean.shape:
            raise CalibrationError(f"novelty features have shape {v.shape[1:]}; the calibration expects {self.mean.shape}")
        d = v - self.mean  # (n, F)
        z = d @ self.components.T  # (n, k)
        resid = d - z @ self.components  # (n, F)
        m2 = (z**2 / self.variances).sum(axis=1) + (resid**2).sum(axis=1) / self.residual_variance
        return np.sqrt(m2 / self.mean.size)

    def distance(self, x: Any) -> float:
        """Novelty of one input's features ``(F,)``; about 1 for typical inputs of the fitting data."""
        v = np.asarray(x, dtype=np.float64)
        if v.shape != self.mean.shape:
            raise CalibrationError(f"novelty features have shape {v.shape}; the calibration expects {self.mean.shape}")
        return float(self.distances(v[None])[0])

    def to_params(self) -> dict[str, Any]:
        return {"mean": pack_array(self.mean), "components": pack_array(self.components),
                "variances": pack_array(self.variances), "residual_variance": self.residual_variance}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> NoveltyModel:
        try:
            mean = unpack_array(params["mean"], "novelty mean")
            comps = unpack_array(params["components"], "novelty components")
            var = unpack_array(params["variances"], "novelty variances")
            rv = float(params["residual_variance"])
        except KeyError as exc:
            raise CalibrationError(f"score novelty is missing its fitted parameter {exc.args[0]!r}; "
                                   "fit it with fit_score('novelty', ...)") from None
        if mean.ndim != 1 or comps.ndim != 2 or comps.shape[1] != mean.size or var.shape != (comps.shape[0],):
            raise CalibrationError("score novelty: inconsistent shapes of mean / components / variances")
        if not (np.isfinite(mean).all() and np.isfinite(comps).all() and np.isfinite(var).all()):
            raise CalibrationError("score novelty: its statistics must be finite")
        if (var <= 0).any() or not rv > 0:
            raise CalibrationError("score novelty: variances must be positive")
        return cls(mean, comps, var, rv)


@functools.lru_cache(maxsize=64)
def _block_columns(n_features: int, blocks: tuple[str, ...]) -> np.ndarray:
    """:func:`feature_columns` as a read-only array, computed once per layout (a call scores one input)."""
    cols = np.asarray(feature_columns(n_features, blocks))
    cols.flags.writeable = False
    return cols


@dataclass(frozen=True)
class NoveltyView:
    """One view: which feature blocks it reads (None: the first ``F_v`` features), its Gaussian and scale."""

    name: str
    blocks: tuple[str, ...] | None
    model: NoveltyModel
    scale: float  # the view's distance at the reference inputs' quantile

    def columns(self, n_features: int) -> np.ndarray:
        if self.blocks is None:
            if n_features < self.model.mean.size:
                raise CalibrationError(f"novelty features have {n_features} values; the calibration's view "
                                       f"{self.name!r} expects at least {self.model.mean.size}")
            return np.arange(self.model.mean.size)
        return _block_columns(n_features, tuple(self.blocks))


@dataclass(frozen=True)
class ViewsNovelty:
    """Novelty as the largest of several views' scaled distances (see the module docstring)."""

    views: tuple[NoveltyView, ...]
    quantile: float | None = None

    @classmethod
    def fit(
        cls,
        features: Any,
        reference: Any,
        *,
        views: Mapping[str, Sequence[str]] | None = None,
        rank: int = 64,
        quantile: float = 0.995,
    ) -> ViewsNovelty:
        """Fit each view's Gaussian on ``features`` ``(n, F)`` and its scale on ``reference`` ``(m, F)``.

        ``views`` maps a view name to feature block names (default :data:`DEFAULT_VIEWS`);
        ``None`` for a view's blocks, or features that do not split into the blocks, is
        refused. ``reference`` must be other inputs of the same distribution, not ``features``:
        distances of the inputs a Gaussian was fitted on are too small (more so at high rank).
        """
        x = np.asarray(features, dtype=np.float64)
        ref = np.asarray(reference, dtype=np.float64)
        if x.ndim != 2 or ref.ndim != 2 or ref.shape[1:] != x.shape[1:] or len(ref) < 2:
            raise CalibrationError(f"novelty needs fitting features (n, F) and at least 2 reference inputs (m, F); "
                                   f"got {x.shape} and {ref.shape}")
        if not 0 < float(quantile) < 1:
            raise CalibrationError(f"novelty quantile must be in (0, 1), got {quantile!r}")
        out = []
        for name, blocks in (DEFAULT_VIEWS if views is None else views).items():
            cols = feature_columns(x.shape[1], list(blocks))
            model = NoveltyModel.fit(x[:, cols], rank=rank)
            scale = float(np.quantile(model.distances(ref[:, cols]), float(quantile)))
            out.append(NoveltyView(str(name), tuple(blocks), model, max(scale, 1e-12)))
        if not out:
            raise CalibrationError("novelty needs at least one view")
        return cls(tuple(out), float(quantile))

    def distances(self, x: Any) -> np.ndarray:
        """Novelty of inputs ``(n, F)`` -> ``(n,)``: the largest scaled view distance."""
        v = np.atleast_2d(np.asarray(x, dtype=np.float64))
        per = [view.model.distances(v[:, view.columns(v.shape[1])]) / view.scale for view in self.views]
        return per[0] if len(per) == 1 else np.maximum.reduce(per)

    def distance(self, x: Any) -> float:
        """Novelty of one input's features ``(F,)``."""
        v = np.asarray(x, dtype=np.float64)
        if v.ndim != 1:
            raise CalibrationError(f"novelty features of one input have shape (F,), got {v.shape}")
        return float(self.distances(v[None])[0])

    def view_distances(self, x: Any) -> dict[str, float]:
        """Each view's scaled distance for one input ``(F,)`` (which view found it novel)."""
        v = np.asarray(x, dtype=np.float64)
        return {view.name: float(view.model.distances(v[view.columns(v.size)][None])[0] / view.scale)
                for view in self.views}

    def to_params(self) -> dict[str, Any]:
        return {"views": [{"name": v.name, "blocks": None if v.blocks is None else list(v.blocks),
                           "scale": v.scale, **v.model.to_params()} for v in self.views],
                "quantile": self.quantile}

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ViewsNovelty:
        """Read :meth:`to_params`; the older single-Gaussian parameters are one view of scale 1."""
        if "views" not in params:  # a calibration from before views: one Gaussian over the first F_v features
            return cls((NoveltyView("all", None, NoveltyModel.from_params(params), 1.0),), None)
        raw = params["views"]
        if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or not raw:
            raise CalibrationError("score novelty: 'views' must be a non-empty list")
        views = []
        for i, v in enumerate(raw):
            if not isinstance(v, Mapping):
                raise CalibrationError(f"score novelty: view {i} must be an object")
            blocks = v.get("blocks")
            if blocks is not None:
                if not isinstance(blocks, Sequence) or isinstance(blocks, (str, bytes)):
                    raise CalibrationError(f"score novelty: view {i}'s blocks must be a list of names")
                blocks = tuple(str(b) for b in blocks)
                feature_columns(len(PROMPT_FEATURE_BLOCKS), blocks)  # unknown block names fail here, naming the choices
            try:
                scale = float(v.get("scale", 1.0))
            except (TypeError, ValueError):
                raise CalibrationError(f"score novelty: view {i}'s scale must be a number") from None
            if not np.isfinite(scale) or scale <= 0:
                raise CalibrationError(f"score novelty: view {i}'s scale must be positive and finite")
            views.append(NoveltyView(str(v.get("name", f"view{i}")), blocks, NoveltyModel.from_params(v), scale))
        q = params.get("quantile")
        return cls(tuple(views), None if q is None else float(q))
