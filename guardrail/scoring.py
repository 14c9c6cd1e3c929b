"""From one answer's per-token maps to its score: shared by the Guard and ``guardrail calibrate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from calibration import answer_score, content_token_mask, token_entropy

__all__ = ["AnswerScore", "cut_at_eos", "score_answer"]


@dataclass(frozen=True)
class AnswerScore:
    """``entropies`` (T,) per-token map entropies, ``content`` (T,) which count, ``score`` their aggregate
    (higher = more uncertain), or None when the answer has no content token (nothing to score)."""

    entropies: np.ndarray
    content: np.ndarray
    score: float | None


def cut_at_eos(token_ids: Sequence[int], eos_ids: Iterable[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first end-of-sequence token, and whether one was found."""
    eos = set(eos_ids)
    ids = [int(t) for t in token_ids]
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1], True
    return ids, False


def score_answer(
    maps: np.ndarray,
    token_ids: Sequence[int],
    tokenizer: Any,
    *,
    normalized: bool = True,
    aggregation: str = "mean",
    eos_ids: Iterable[int] = (),
) -> AnswerScore:
    """Score one answer from its maps (T, rows, cols) and generated token ids (T,).

    Entropy per token (normalised by log(N_img) when ``normalized``), content tokens as the
    tokenizer defines them (special tokens, end-of-sequence and punctuation excluded), then
    ``aggregation`` ("mean" | "max" | "first") over the content tokens. An answer without any
    content token (only punctuation or end-of-sequence) gets ``score=None``.
    """
    maps = np.asarray(maps)
    ent = np.atleast_1d(np.asarray(token_entropy(maps, normalized=normalized, map_ndim=2), dtype=float))  # (T,)
    content = content_token_mask(list(token_ids), tokenizer, extra_excluded_ids=eos_ids)  # (T,)
    score = answer_score(ent, content, aggregate=aggregation) if content.any() else None
    return AnswerScore(ent, content, score)
