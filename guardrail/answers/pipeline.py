"""The answer pipeline: from what one ``generate`` recorded to signals, scores and a verdict.

Every guarded path goes through here, once per row: the Guard (``generate``, ``generate_batch``,
``stream``, and so ``guardrail serve``), ``guardrail calibrate`` and the benchmarks.

1. :func:`generation_rows` reads a finished ``generate`` (the capture's maps and prompt features,
   the token-signal recorder's per-step statistics) into one :class:`RowSignals` per batch row.
2. :func:`answer_signals` cuts a row at its end-of-sequence token and computes, once, everything a
   score may need about the answer (:class:`calibration.AnswerSignals`: content tokens, map
   entropies, the maps, token log-probabilities, predictive entropies, margins, features).
3. :class:`Scorer` evaluates every score the registry marks as observed, the calibration's own
   score and its novelty gate, and turns the calibration's score into a verdict.

A score declares what it needs (``needs``) and whether it is fitted; nothing here names a
particular score: a score registered with :func:`calibration.register_score` and an ``observe``
parameter set is reported by every guarded call, in spans and in serve's responses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from calibration import AnswerSignals, content_token_mask, get_score, observed_scores, token_entropy
from calibration.answer_scores import TOKEN_MEMO
from fastrm_common.errors import PolicyError

__all__ = [
    "OBSERVED_SCORES",
    "RowScoring",
    "RowSignals",
    "Scorer",
    "Judgement",
    "add_imageless_logprobs",
    "answer_signals",
    "calibration_id",
    "check_calibration_identity",
    "cut_at_eos",
    "display_entropies",
    "evidence_signals",
    "explain_verdict",
    "gathers_visual_contrast",
    "generation_rows",
]


def cut_at_eos(token_ids: Sequence[int], eos_ids: Iterable[int]) -> tuple[list[int], bool]:
    """Tokens up to and including the first end-of-sequence token, and whether one was found."""
    eos = set(eos_ids)
    ids = [int(t) for t in token_ids]
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1], True
    return ids, False


@dataclass(frozen=True)
class RowSignals:
    """One batch row of a finished ``generate``, before it is cut at its end-of-sequence token.

    ``maps`` (T, rows, cols) for one region, (T, 1, N_img) over several, or None when the capture
    failed; ``token_signals``: the recorder's per-step arrays (``token_logprob``,
    ``predictive_entropy``, ``margin``, each (T,)) and the prompt's pooled ``features`` (F,).
    """

    maps: np.ndarray | None
    token_signals: dict[str, Any] = field(default_factory=dict)


def generation_rows(cap: Any, recorder: Any, out: Any) -> list[RowSignals]:
    """One :class:`RowSignals` per row of a ``generate`` run under ``capture`` with ``recorder``
    (:class:`~guardrail.answers.token_signals.TokenSignals`); ``out`` its (B, S) sequences.

    With a capture that kept the hidden states (``keep_states=True``), each row also gets the
    evidence signals (:func:`evidence_signals`)."""
    lp, ent, margin = recorder.stacked(out)  # (B, T) each: one transfer
    feats = cap.features if cap.prompt_features is not None else None
    evidence = evidence_signals(cap)
    rows = []
    for b in range(out.shape[0]):
        sig = {"token_logprob": lp[b], "predictive_entropy": ent[b], "margin": margin[b],
               "features": None if feats is None else feats[b]}
        if evidence is not None:
            sig.update({k: v[b] for k, v in evidence.items()})
        rows.append(RowSignals(maps=cap.maps_2d(b).numpy(), token_signals=sig))
    return rows


def add_imageless_logprobs(rows: list[RowSignals], model: Any, inputs: dict, out: Any, adapter: Any) -> None:
    """Give each row the ``imageless_logprob`` signal of ``visual_contrast``: the image-free pass
    (:func:`fastrm_core.contrast.imageless_logprobs`) over the generation ``out`` of ``inputs``."""
    from fastrm_core.contrast import imageless_logprobs

    blind = imageless_logprobs(model, inputs, out, adapter=adapter).double().cpu().numpy()  # (B, T): one transfer
    for b, row in enumerate(rows):
        row.token_signals["imageless_logprob"] = blind[b]


def evidence_signals(cap: Any, n: int | None = None) -> dict[str, np.ndarray] | None:
    """What each token's map points at, for every row of a capture that kept its hidden states.

    For token t with map m_t over a row's N image tokens (normalised to sum 1) and the image tokens'
    final hidden states H (N, D), the attended evidence is e_t = m_t H (D,); ``grounding`` is the
    cosine between e_t and the token's own predicting state h_t. Computed on the model's device in
    one batched product at the end of generation, O(T N D), and copied to the CPU once (no host
    sync per token). Returns {"grounding": (B, T), "token_states": (B, T, D), "evidence": (B, T, D)}
    (float32), or None when the capture kept no states. ``n``: the first n tokens only (a stream).
    """
    import torch

    steps, states = cap.stacked_steps(), cap.stacked_states()  # (B, T, N_max), (B, T, D)
    if cap.image_states is None or steps is None or states is None:
        return None
    n = min(steps.shape[1], states.shape[1]) if n is None else min(n, steps.shape[1], states.shape[1])
    with torch.no_grad():
        probs = steps[:, :n].float()  # (B, T, N_max)
        n_max = probs.shape[-1]
        probs = probs.clamp_min(0)
        if any(length != n_max for length in cap.lengths):  # padded image positions weigh 0
            valid = torch.arange(n_max, device=probs.device)[None, :] < torch.as_tensor(
                cap.lengths, device=probs.device)[:, None]  # (B, N_max)
            probs = probs * valid[:, None, :]
        weights = probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)
        images = cap.image_states.to(probs.device).float()  # (B, N_max, D), kept on the CPU at prefill
        queries = states[:, :n].to(probs.device).float()  # (B, T, D)
        evidence = torch.bmm(weights, images)  # (B, T, D): sum_n weights[b, t, n] images[b, n, :]
        cos = torch.nn.functional.cosine_similarity(evidence, queries, dim=-1, eps=1e-8)  # (B, T)
        packed = torch.cat([cos[..., None], queries, evidence], dim=-1).cpu().numpy()  # one transfer
    d = queries.shape[-1]
    return {"grounding": packed[..., 0].astype(np.float64), "token_states": packed[..., 1: 1 + d],
            "evidence": packed[..., 1 + d:]}


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
    grounding: np.ndarray | None = None,
    token_states: np.ndarray | None = None,
    evidence: np.ndarray | None = None,
    imageless_logprob: np.ndarray | None = None,
    token_texts: Sequence[str] | None = None,
    special_ids: Iterable[int] | None = None,
) -> AnswerSignals:
    """Everything the scores need about one answer, from what its ``generate`` recorded.

    ``token_ids`` (T,) is the answer cut at its end-of-sequence token; the per-token arrays may be
    longer (padding steps of a batch) and are cut to ``T``. ``maps`` (T, rows, cols) give the map
    entropies (nats) and, with ``keep_maps``, the maps themselves (for ``map_spread``). ``token_texts``:
    each token decoded on its own, when the caller has them (else the content mask decodes them);
    ``special_ids``: the tokenizer's :func:`~fastrm_common.tokens.special_token_ids`, when read already.
    """
    ids = list(token_ids)
    t = len(ids)
    content = content_token_mask(ids, tokenizer, extra_excluded_ids=eos_ids, texts=token_texts,
                                 special_ids=special_ids)  # (T,)

    def cut(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a, dtype=np.float64)[:t]

    entropy = n_patches = kept = None
    if maps is not None:
        m = np.asarray(maps)[:t]  # (T, rows, cols)
        n_patches = math.prod(m.shape[1:])  # (np.prod costs far more on a shape)
        entropy = np.atleast_1d(np.asarray(token_entropy(m, map_ndim=2), dtype=np.float64)) if t else np.zeros(0)
        kept = m.astype(np.float32) if keep_maps else None
    return AnswerSignals(
        content=np.asarray(content, dtype=bool), map_entropy=entropy, n_patches=n_patches, maps=kept,
        token_logprob=cut(token_logprob), predictive_entropy=cut(predictive_entropy), margin=cut(margin),
        features=None if features is None else np.asarray(features, dtype=np.float64), group=group,
        grounding=cut(grounding),
        token_states=None if token_states is None else np.asarray(token_states, dtype=np.float32)[:t],
        evidence=None if evidence is None else np.asarray(evidence, dtype=np.float32)[:t],
        imageless_logprob=cut(imageless_logprob),
    )


def display_entropies(signals: AnswerSignals, normalized: bool = True) -> np.ndarray:
    """Each token's map entropy as results show it: in [0, 1] (divided by ``log N_img``) when
    ``normalized``, else in nats. Read from the signals: the entropies are computed once."""
    h = np.asarray(signals.map_entropy, dtype=np.float64)
    if not normalized or h.size == 0:
        return h
    return np.minimum(h / np.log(signals.n_patches), 1.0)


#: the scores every guarded call reports (``GuardResult.scores``), by name, with their parameters
#: (read from the score registry: each score's ``observe``)
OBSERVED_SCORES: tuple[tuple[str, dict], ...] = tuple(observed_scores())


@dataclass(frozen=True)
class Judgement:
    """What the scores say of one answer (or one claim): every score by name, the calibration's
    score, its verdict (None without a calibration: *unscored*) and whether the novelty gate fired."""

    scores: dict[str, float | None]
    score: float | None
    verdict: str | None
    gated: bool = False


@dataclass
class RowScoring:
    """One row through the pipeline: its signals (None when the guard failed), each token's map
    entropy as results show it and whether it counts, every score, the calibration's score, the
    verdict and why."""

    signals: AnswerSignals | None
    entropies: list[float]
    content: list[bool]
    scores: dict[str, float | None]
    score: float | None
    verdict: str | None
    verdict_reason: str | None
    token_memo: dict = field(default_factory=dict)  # per-token score values, shared with the row's claims

    @classmethod
    def empty(cls) -> "RowScoring":
        return cls(None, [], [], {}, None, None, None)


class Scorer:
    """The Guard's scores: every observed score, the calibration's own score and its novelty gate.

    ``evaluate(signals)`` returns ``(scores, score, verdict)``: ``scores`` by name (the
    calibration's score under its own name, replacing the observed one of that name; ``novelty``
    when the calibration has a gate), ``score`` the calibration's score (None without a calibration
    or when the answer has nothing to score), and ``verdict`` (None without a calibration:
    *unscored*; ``uncertain`` for an answer without content tokens). :meth:`judge` returns the same
    as a :class:`Judgement`.
    """

    def __init__(self, calibration: Any | None):
        self.calibration = calibration
        self.scores = {name: get_score(name, **params) for name, params in observed_scores()}
        self.score = self.gate = None
        if calibration is not None:
            self.score = get_score(calibration.score.name, **calibration.score.params)
            self.scores[self.score.name] = self.score
            if calibration.novelty_gate is not None:
                self.gate = get_score(calibration.novelty_gate.score.name, **calibration.novelty_gate.score.params)
                self.scores["novelty"] = self.gate

    def names(self) -> list[str]:
        return sorted(self.scores)

    def drop_on_demand(self) -> None:
        """Forget the observed scores whose signals come from an optional pass this guard does not run
        (a policy naming one is then refused by :meth:`check_policy`)."""
        self.scores = {name: s for name, s in self.scores.items() if not s.on_demand or s is self.score}

    def check_policy(self, policy: Any) -> None:
        """Refuse a policy with conditions on scores this scorer does not compute (:class:`PolicyError`)."""
        unknown = sorted({name for rule in policy.rules for name in (rule.when.scores or {})} - set(self.names()))
        if unknown:
            from calibration.answer_scores import SCORES

            optional = [n for n in unknown if n in SCORES and SCORES.get(n).on_demand]
            hint = (f" ({', '.join(optional)} needs an optional pass: Guard(visual_contrast=True))" if optional else "")
            raise PolicyError(f"policy {policy.id!r} has conditions on unknown score(s) {', '.join(unknown)}; "
                              f"this guard computes: {', '.join(self.names())}{hint}")

    def group(self, tags: Iterable[str]) -> str | None:
        """The first of ``tags`` the calibration has its own threshold for, or None."""
        cal = self.calibration
        return next((t for t in tags if cal is not None and cal.groups and t in cal.groups.thresholds), None)

    def threshold(self, tags: Iterable[str] = ()) -> float | None:
        """The calibration's threshold for a call with ``tags`` (None without a calibration)."""
        return None if self.calibration is None else self.calibration.threshold_for(self.group(tags))

    def _plan(self) -> tuple:
        """Per score: its name, the score, the signals it needs and whether it is absent without them
        (an observed score of an optional pass); built once per set of scores."""
        plan = self.__dict__.get("_judge_plan")
        if plan is None or plan[0] is not self.scores:
            steps = tuple((name, s, tuple(n for n in s.needs if n != "scores"), bool(s.on_demand and s is not self.score))
                          for name, s in self.scores.items())
            plan = self.__dict__["_judge_plan"] = (self.scores, steps)
        return plan[1]

    def judge(self, signals: AnswerSignals, group: str | None = None, token_memo: dict | None = None) -> Judgement:
        """Every score of ``signals``, the calibration's score and verdict. ``token_memo``: per-token
        values shared by the answers whose signals differ only in their content mask (an answer and
        its claims, :data:`calibration.answer_scores.TOKEN_MEMO`)."""
        values = {}
        memo: dict = {} if token_memo is None else {TOKEN_MEMO: token_memo}  # a fused score reuses its bases' values
        for name, s, needs, optional in self._plan():
            gathered = all(getattr(signals, n) is not None for n in needs)
            if gathered:
                values[name] = s._shared(signals, memo)
            elif not optional:  # an optional pass that did not run: absent
                values[name] = None
        if self.calibration is None:
            return Judgement(values, None, None)
        score = values[self.score.name]
        if score is None:  # nothing to score: nothing supports the answer
            return Judgement(values, None, "uncertain")
        novelty = values.get("novelty") if self.gate is not None else None
        gated = novelty is not None and self.calibration.novelty_gate is not None and (
            not math.isfinite(novelty) or novelty >= self.calibration.novelty_gate.threshold)
        return Judgement(values, score, self.calibration.verdict(score, novelty=novelty, group=group), gated)

    def score_row(self, token_ids: Sequence[int], tokenizer: Any, maps: np.ndarray, token_signals: dict,
                  eos_ids: Iterable[int], tags: Iterable[str] = (), token_texts: Sequence[str] | None = None,
                  special_ids: Iterable[int] | None = None) -> RowScoring:
        """One generated row (cut at its end-of-sequence token) through the pipeline: its signals,
        computed once, every score, the verdict and its explanation (``token_texts``, ``special_ids``: see
        :func:`answer_signals`)."""
        cal = self.calibration
        sig = answer_signals(token_ids, tokenizer, maps=maps, eos_ids=eos_ids, token_texts=token_texts,
                             special_ids=special_ids, **token_signals)
        entropies = display_entropies(sig, normalized=True if cal is None else cal.entropy_normalized).tolist()
        group = self.group(tags)
        # no calibration: every score, verdict None ("unscored"); no content token: "uncertain"
        token_memo: dict = {}
        scores, score, verdict = self.evaluate(sig, group=group, token_memo=token_memo)
        reason = explain_verdict(cal, score, verdict, novelty=scores.get("novelty"), group=group)
        return RowScoring(sig, entropies, sig.content.tolist(), scores, score, verdict, reason, token_memo)

    def evaluate(self, signals: AnswerSignals, group: str | None = None,
                 token_memo: dict | None = None) -> tuple[dict, float | None, str | None]:
        j = self.judge(signals, group, token_memo)
        return j.scores, j.score, j.verdict


def gathers_visual_contrast(asked: bool | None, *scorers: Scorer | None) -> bool:
    """Whether a guard runs the image-free pass: asked (True), or needed by the calibration of one of
    ``scorers`` (its score reads ``imageless_logprob``); ``asked=False`` with such a calibration is
    refused. When the pass does not run, the scorers forget the scores that need it
    (:meth:`Scorer.drop_on_demand`)."""
    from fastrm_common.errors import InputError

    if asked is not None and not isinstance(asked, bool):
        raise InputError(f"visual_contrast must be True, False or None, got {asked!r}")
    needed = [(k, s) for k, s in enumerate(scorers) if s is not None and s.score is not None
              and "imageless_logprob" in s.score.signals_needed(**s.score.params)]
    if asked is False and needed:
        k, s = needed[0]
        which = "calibration" if k == 0 else "claim calibration"
        raise InputError(f"the {which}'s score {s.score.label} needs the image-free pass: use visual_contrast=True "
                         "(or None, which runs it when a calibration needs it)")
    gathered = bool(asked) or bool(needed)
    if not gathered:
        for s in scorers:
            if s is not None:
                s.drop_on_demand()
    return gathered


def calibration_id(calibration: Any | None) -> str:
    """How spans name a calibration: ``rule@threshold score:name [data:hash]`` (``none`` without one)."""
    if calibration is None:
        return "none"
    threshold = calibration.threshold
    out = (f"{calibration.rule}@{'none' if threshold is None else format(threshold, '.6g')}"
           f" score:{calibration.score.name}")
    if calibration.dataset_hash:
        out += f" data:{calibration.dataset_hash[:16]}"
    return out


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


def check_calibration_identity(calibration: Any, adapter: Any, model: Any, proxy_hash: str,
                               allow_unhashed: bool = False, level: str = "answer") -> None:
    """Refuse a calibration fitted with another model or proxy (:class:`ConfigMismatchError`), or of
    the other ``level`` (a claim-level calibration given to judge whole answers: :class:`InputError`).

    The weights are hashed (one pass) when the calibration names a model: a recorded hash is compared,
    a missing one refused, as a proxy's is; the folder name alone never vouches for the model.
    ``allow_unhashed``: the caller's explicit opt-out for older files, compared by name only.
    """
    from fastrm_common.errors import CalibrationError, InputError
    from fastrm_core import weights_fingerprint

    found = getattr(calibration, "level", "answer") or "answer"
    if found != level and level == "answer":
        raise InputError("calibration is a claim-level calibration (it judges each claim): pass it as "
                         "claim_calibration=..., and an answer-level one (or none) as calibration")
    if found != level:
        raise CalibrationError("claim_calibration is an answer-level calibration (level 'answer'); fit one on "
                               "claim-labelled data with `guardrail calibrate --claims`")

    named = calibration.model_hash is not None or calibration.model_id is not None
    if calibration.model_hash is None and allow_unhashed:
        named = False
    calibration.check_compatible(model_id=None if named else adapter.model_id,
                                 model_hash=weights_fingerprint(model) if named else None, proxy_hash=proxy_hash)
