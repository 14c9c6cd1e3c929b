"""From per-token entropies to one score per answer.

An answer's score aggregates the map entropies of its *content* tokens (see
:func:`content_token_mask`). **Higher score = less focused maps = more uncertain.**

Aggregations (:data:`Aggregation`):

- ``"mean"`` (default, as in the FastRM paper): the mean over content tokens;
- ``"max"``: the least focused content token decides;
- ``"first"``: the first content token only (for short answers the first token
  carries most of the decision).
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

from fastrm_common.errors import CalibrationError
from fastrm_common.tokens import content_token_mask

__all__ = ["AGGREGATIONS", "Aggregation", "answer_score", "content_token_mask"]

Aggregation = Literal["mean", "max", "first"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)


def _to_1d(values: Any, name: str) -> np.ndarray:
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # torch.Tensor
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise CalibrationError(f"{name} must be one-dimensional (one value per token), got shape {arr.shape}")
    return arr


def answer_score(
    token_entropies: Any,
    content_mask: Any = None,
    aggregate: Aggregation = "mean",
) -> float:
    """Aggregate per-token entropies over an answer's content tokens.

    Args:
        token_entropies: shape ``(T,)``, one entropy per generated token (raw nats or
            normalised, as long as calibration used the same kind).
        content_mask: shape ``(T,)`` booleans, True for the tokens that count (see
            :func:`content_token_mask`). ``None`` counts every token.
        aggregate: ``"mean"``, ``"max"`` or ``"first"``.

    Returns:
        The answer score; higher = more uncertain.

    Raises:
        CalibrationError: unknown aggregation, mismatched lengths, NaN entropies, or an
            answer without any content token (the caller decides what such an answer
            means; it has no score).

    Example:
        >>> answer_score([0.2, 0.9, 0.4], [True, False, True])
        0.30000000000000004
        >>> answer_score([0.2, 0.9, 0.4], [True, True, False], aggregate="max")
        0.9
    """
    if aggregate not in AGGREGATIONS:
        raise CalibrationError(f"unknown aggregation {aggregate!r}; expected one of: {', '.join(AGGREGATIONS)}")
    h = _to_1d(token_entropies, "token_entropies").astype(np.float64)
    if content_mask is None:
        mask = np.ones(h.shape, dtype=bool)
    else:
        mask = _to_1d(content_mask, "content_mask")
        if mask.dtype != bool:
            raise CalibrationError(f"content_mask must be boolean, got dtype {mask.dtype}")
        if mask.shape != h.shape:
            raise CalibrationError(
                f"content_mask has {mask.shape[0]} entries but there are {h.shape[0]} token entropies"
            )
    selected = h[mask]  # (T_content,)
    if selected.size == 0:
        raise CalibrationError("the answer has no content tokens to score")
    if not np.isfinite(selected).all():
        raise CalibrationError("token entropies of content tokens contain NaN or infinite values")
    if aggregate == "mean":
        return float(selected.mean())
    if aggregate == "max":
        return float(selected.max())
    return float(selected[0])
