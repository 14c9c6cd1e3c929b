"""Shannon entropy of relevancy maps: how spread out a token's evidence is.

A FastRM map holds one probability per image patch (``p_j = sigmoid(s_j)``). The
probabilities do not sum to 1, so each map is first normalised,
``p̃_j = p_j / Σ_k p_k``, and its entropy is ``H = -Σ_j p̃_j log p̃_j`` in nats.

Direction: **higher entropy = less focused map = more uncertain answer.** A map that
puts all its mass on one patch has ``H = 0``; a flat map over ``N`` patches has the
maximum ``H = log N``. Dividing by ``log N`` (``normalized=True``) maps every grid size
to ``[0, 1]`` so entropies of different grids compare.

This module is pure: arrays in, arrays out, no I/O.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastrm_common.errors import CalibrationError

__all__ = ["token_entropy"]


def _as_numpy(probs: Any) -> np.ndarray:
    """Accept numpy arrays, nested lists or torch tensors (without importing torch)."""
    if hasattr(probs, "detach") and hasattr(probs, "cpu"):  # torch.Tensor, duck-typed
        probs = probs.detach().cpu().double().numpy()
    try:
        return np.asarray(probs, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CalibrationError(f"relevancy map is not numeric: {exc}") from exc


def token_entropy(probs: Any, normalized: bool = False, *, map_ndim: int | None = None) -> Any:
    """Entropy of one or more relevancy maps, in nats (or in ``[0, 1]`` if normalised).

    Args:
        probs: non-negative map probabilities (numpy array, list or torch tensor).
            The last ``map_ndim`` axes form one map; leading axes are a batch, e.g. one
            map per generated token. Without ``map_ndim`` the layout is inferred from the
            number of dimensions:

            - ``(N,)`` one flat map -> a float;
            - ``(T, N)`` one flat map per token -> shape ``(T,)``;
            - ``(T, rows, cols)`` one grid per token -> shape ``(T,)``.

            A single grid ``(rows, cols)`` is ambiguous with ``(T, N)``: pass
            ``map_ndim=2`` (or flatten it). Other ranks need ``map_ndim``.
        normalized: divide by ``log N`` (``N`` = patches per map) so the result lies in
            ``[0, 1]``; requires ``N >= 2``.
        map_ndim: how many trailing axes make up one map (1 or more).

    Returns:
        A Python float for a single map, else a float64 array of the batch shape.
        Higher = less focused = more uncertain.

    Raises:
        CalibrationError: NaN, infinite or negative probabilities, an empty map, or a
            map whose probabilities sum to 0 (its normalisation is undefined).

    Zeros are fine: ``0 · log 0`` is taken as 0.

    Example:
        >>> import numpy as np
        >>> round(token_entropy(np.ones(576)), 4) == round(float(np.log(576)), 4)
        True
        >>> token_entropy(np.eye(4), normalized=True)  # four one-hot maps
        array([0., 0., 0., 0.])
    """
    p = _as_numpy(probs)
    if map_ndim is None:
        if p.ndim in (1, 2):
            map_ndim = 1
        elif p.ndim == 3:
            map_ndim = 2
        else:
            raise CalibrationError(
                f"cannot infer the map layout of an array of shape {p.shape}; "
                "pass map_ndim (the number of trailing axes forming one map)"
            )
    if not isinstance(map_ndim, (int, np.integer)) or map_ndim < 1 or map_ndim > p.ndim:
        raise CalibrationError(
            f"map_ndim must be an integer between 1 and {p.ndim} for shape {p.shape}, got {map_ndim!r}"
        )
    batch_shape = p.shape[: p.ndim - map_ndim]
    n = math.prod(p.shape[p.ndim - map_ndim :])
    if n == 0:
        raise CalibrationError(f"relevancy map of shape {p.shape} has no patches")
    flat = p.reshape(*batch_shape, n)  # (..., N)

    if not np.isfinite(flat).all():
        if np.isnan(flat).any():
            raise CalibrationError("relevancy map contains NaN probabilities")
        raise CalibrationError("relevancy map contains infinite probabilities")
    if flat.size and flat.min() < 0:
        raise CalibrationError(
            f"relevancy map contains negative probabilities (min {flat.min():.3g}); "
            "entropy needs non-negative values such as sigmoid outputs"
        )
    total = flat.sum(axis=-1, keepdims=True)  # (..., 1)
    if (total <= 0).any():
        raise CalibrationError("a relevancy map sums to 0; its entropy is undefined")

    q = flat / total  # (..., N), each map sums to 1
    # where q == 0 the term is 0 · log 0 := 0; np.where keeps log from seeing zeros
    positive = q > 0
    terms = np.where(positive, q * np.log(np.where(positive, q, 1.0)), 0.0)
    h = -terms.sum(axis=-1)  # (...)
    h = np.maximum(h, 0.0)  # rounding can give -0.0 / -1e-17 for one-hot maps

    if normalized:
        if n < 2:
            raise CalibrationError("normalised entropy needs maps of at least 2 patches (log 1 = 0)")
        h = np.minimum(h / np.log(n), 1.0)
    if h.ndim == 0:
        return float(h)
    return h
