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

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Literal, get_args

import numpy as np

from fastrm_core.errors import CalibrationError

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


def _is_punctuation_or_blank(text: str) -> bool:
    """True when ``text`` holds only whitespace and Unicode punctuation (categories P*)."""
    return all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in text)


def content_token_mask(
    token_ids: Iterable[int] | Any,
    tokenizer: Any,
    *,
    extra_excluded_ids: Iterable[int] = (),
) -> np.ndarray:
    """Which generated tokens carry content, as the tokenizer defines them.

    A token is **not** content when it is

    - a special token of the tokenizer (``tokenizer.all_special_ids``: BOS, EOS, pad,
      unk, image and chat-template markers, ...);
    - the tokenizer's ``eos_token_id`` or ``pad_token_id``, or in ``extra_excluded_ids``
      (pass the generation config's EOS ids here when they differ from the
      tokenizer's, e.g. ``<|im_end|>`` or a list of stop tokens);
    - decoded on its own (``tokenizer.decode([id])``) to an empty string, whitespace, or
      punctuation only (Unicode categories ``P*``: ``.``, ``,``, ``?``, ``"``, ...).

    Everything else counts, including digits and symbols such as ``+`` or ``%`` (they
    can be the answer).

    Args:
        token_ids: shape ``(T,)``, the generated token ids (list, numpy or torch).
        tokenizer: a Hugging Face tokenizer (or anything with ``decode``, and
            optionally ``all_special_ids``, ``eos_token_id``, ``pad_token_id``).
        extra_excluded_ids: more ids to exclude.

    Returns:
        Boolean array of shape ``(T,)``, True for content tokens.

    Example:
        >>> class Tok:  # a stand-in for a Hugging Face tokenizer
        ...     vocab = {0: "</s>", 1: "▁dog", 2: "."}
        ...     all_special_ids, eos_token_id, pad_token_id = [0], 0, None
        ...     def decode(self, ids, **kw): return "".join(self.vocab[i] for i in ids)
        >>> content_token_mask([1, 2, 0], Tok()).tolist()
        [True, False, False]
    """
    if isinstance(token_ids, Sequence):
        ids = [int(i) for i in token_ids]
    else:  # numpy array or torch tensor
        ids = [int(i) for i in _to_1d(token_ids, "token_ids").tolist()]
    excluded: set[int] = {int(i) for i in extra_excluded_ids}
    excluded.update(int(i) for i in (getattr(tokenizer, "all_special_ids", None) or ()))
    for attr in ("eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is None:
            continue
        if isinstance(value, (list, tuple, set)):
            excluded.update(int(v) for v in value)
        else:
            excluded.add(int(value))

    mask = np.zeros(len(ids), dtype=bool)
    cache: dict[int, bool] = {}
    for t, tid in enumerate(ids):
        if tid in excluded:
            continue
        if tid not in cache:
            text = tokenizer.decode([tid], skip_special_tokens=False)
            # SentencePiece's word marker survives some decoders; it is a space
            text = text.replace("\u2581", " ")
            cache[tid] = not _is_punctuation_or_blank(text)
        mask[t] = cache[tid]
    return mask
