"""From one answer's per-token maps and signals to its scores: shared by the Guard and ``guardrail calibrate``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from calibration import AnswerSignals, answer_score, content_token_mask, token_entropy

__all__ = ["OBSERVED_SCORES", "AnswerScore", "Scorer", "answer_signals", "cut_at_eos", "explain_verdict", "score_answer"]


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


def answer_signals(
    token_ids: Sequence[int],
    tokenizer: Any,
    *,
    maps: np.ndarray | None = None,
    token_logprob: np.ndarray | None = None,
    predictive_entropy: np.ndarray | None = None,
    margin: np.ndarray | None = None,
    features: np.ndarray | None = None,
    eos_ids: Iterable[int] = (),
    group: str | None = None,
    keep_maps: bool = True,
) -> AnswerSignals:
    """Everything the scores need about one answer, from what its ``generate`` recorded.

    ``token_ids`` (T,) is the answer cut at its end-of-sequence token; the per-token arrays may be
    longer (padding steps of a batch) and are cut to ``T``. ``maps`` (T, rows, cols) give the map
    entropies (nats) and, with ``keep_maps``, the maps themselves (for ``map_spread``).
    """
    ids = list(token_ids)
    t = len(ids)
    content = content_token_mask(ids, tokenizer, extra_excluded_ids=eos_ids)  # (T,)

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a, dtype=np.float64)[:t]

    entropy = n_patches = kept = None
    if maps is not None:
        m = np.asarray(maps)[:t]  # (T, rows, cols)
        n_patches = int(np.prod(m.shape[1:]))
        entropy = np.atleast_1d(np.asarray(token_entropy(m, map_ndim=2), dtype=np.float64)) if t else np.zeros(0)
        kept = m.astype(np.float32) if keep_maps else None
    return AnswerSignals(
        content=np.asarray(content, dtype=bool), map_entropy=entropy, n_patches=n_patches, maps=kept,
        token_logprob=cut(token_logprob), predictive_entropy=cut(predictive_entropy), margin=cut(margin),
        features=None if features is None else np.asarray(features, dtype=np.float64), group=group,
    )


#: the scores every guarded call reports (``GuardResult.scores``), by name, with their default parameters
OBSERVED_SCORES: tuple[tuple[str, dict], ...] = (
    ("map_entropy", {"aggregation": "mean", "normalized": True}),
    ("map_spread", {}),
    ("token_nll", {"aggregation": "max"}),
    ("predictive_entropy", {"aggregation": "max"}),
    ("low_margin", {"aggregation": "max"}),
)


class Scorer:
    """The Guard's scores: every observed score, the calibration's own score and its novelty gate.

    ``evaluate(signals)`` returns ``(scores, score, verdict)``: ``scores`` by name (the
    calibration's score under its own name, replacing the observed one of that name; ``novelty``
    when the calibration has a gate), ``score`` the calibration's score (None without a calibration
    or when the answer has nothing to score), and ``verdict`` (None without a calibration:
    *unscored*; ``uncertain`` for an answer without content tokens).
    """

    def __init__(self, calibration: Any | None):
        from calibration import get_score

        self.calibration = calibration
        self.scores = {name: get_score(name, **params) for name, params in OBSERVED_SCORES}
        self.score = self.gate = None
        if calibration is not None:
            self.score = get_score(calibration.score.name, **calibration.score.params)
            self.scores[self.score.name] = self.score
            if calibration.novelty_gate is not None:
                self.gate = get_score(calibration.novelty_gate.score.name, **calibration.novelty_gate.score.params)
                self.scores["novelty"] = self.gate

    def names(self) -> list[str]:
        return sorted(self.scores)

    def evaluate(self, signals: AnswerSignals, group: str | None = None) -> tuple[dict, float | None, str | None]:
        values = {name: s(signals) if all(signals.has(n) for n in s.needs if n != "scores") else None
                  for name, s in self.scores.items()}
        if self.calibration is None:
            return values, None, None
        score = values[self.score.name]
        if score is None:  # nothing to score: nothing supports the answer
            return values, None, "uncertain"
        novelty = values.get("novelty") if self.gate is not None else None
        return values, score, self.calibration.verdict(score, novelty=novelty, group=group)


def explain_verdict(calibration: Any | None, score: float | None, verdict: str | None, *,
                    novelty: float | None = None, group: str | None = None) -> str | None:
    """Why the verdict is what it is, in one sentence that names what decided it.

    The novelty gate overrides the score, a calibration without a threshold marks nothing
    confident, and an answer without content token has no score: each says so, so an
    explanation never claims "score below the threshold" next to an ``uncertain`` verdict.
    None without a calibration (no verdict: *unscored*).

    >>> explain_verdict(None, None, None) is None
    True
    """
    if calibration is None or verdict is None:
        return None
    name = calibration.score.name
    if score is None:
        return f"uncertain: the answer has no content token, so there is no {name} score to trust it by"
    threshold = calibration.threshold_for(group)
    gate = calibration.novelty_gate
    if gate is not None and novelty is not None and (novelty != novelty or novelty >= gate.threshold):
        side = ("" if threshold is None
                else f" ({name} score {score:.4g} is {'below' if score < threshold else 'at or above'} "
                     f"its threshold {threshold:.4g}, but the gate decides first)")
        return (f"uncertain: the novelty gate fired: the input is unlike the calibration data (novelty "
                f"{novelty:.4g} at or above the gate's {gate.threshold:.4g}), so the answer is uncertain "
                f"whatever its score{side}")
    if threshold is None:
        return (f"uncertain: the calibration marks no answer confident (its threshold is null: its rule "
                f"{calibration.rule} found none it could vouch for); {name} score {score:.4g}")
    if verdict == "confident":
        return f"confident: {name} score {score:.4g} is below the threshold {threshold:.4g} (higher = more uncertain)"
    return f"uncertain: {name} score {score:.4g} is at or above the threshold {threshold:.4g} (higher = more uncertain)"
