"""Claims of an answer: spans that each assert one thing, with their own signals, scores, verdict
and map, and the answer without the uncertain ones (``redact``).

A claim goes through the same pipeline as a whole answer: its signals are the answer's, restricted
to the claim's tokens (:func:`claim_signals`: the content mask keeps only the claim's content
tokens, so every score aggregates over the claim alone), and the claim calibration's score and
threshold give its verdict. Its map is the mean of its content tokens' maps, each normalised to sum
1 (:func:`claim_map`). Splitters come from :mod:`fastrm_common.claims`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from calibration import AnswerSignals
from fastrm_common.claims import ClaimSpan, split_claims
from fastrm_common.tokens import decode_each, decode_prefixes

if TYPE_CHECKING:
    from guardrail.answers.pipeline import RowScoring

__all__ = ["ClaimStream", "ClaimTokens", "align_claims", "claim_map", "claim_signals", "claims_left", "map_totals", "redact",
           "score_claims", "split_and_align", "token_char_spans"]

_ADD = np.add.reduce


def token_char_spans(tokenizer: Any, token_ids: Sequence[int], answer: str,
                     prefixes: Sequence[str] | None = None) -> list[tuple[int, int]]:
    """Each token's character range in ``answer`` (the decoded, stripped text of ``token_ids``).

    Read from the tokenizer's own decoding of growing prefixes, so it holds for any tokenizer
    (word pieces, byte fallback, spaces the decoder adds). A token that adds no text (special, end of
    sequence) gets an empty range at its position. ``prefixes``: those decodings
    (``decode_prefixes(tokenizer, token_ids, skip_special_tokens=True)``) when the caller has them.
    """
    ids = [int(t) for t in token_ids]
    if prefixes is None or len(prefixes) != len(ids):
        prefixes = decode_prefixes(tokenizer, ids, skip_special_tokens=True)  # prefixes[i]: the first i + 1 tokens
    full = prefixes[-1] if prefixes else ""
    lead = len(full) - len(full.lstrip())
    spans, prev = [], 0
    for i in range(len(ids)):
        cur = len(prefixes[i])
        a, b = min(max(prev - lead, 0), len(answer)), min(max(cur - lead, 0), len(answer))
        while a < b and answer[a].isspace():  # the decoder's space before a word is not the token's text
            a += 1
        spans.append((a, b))
        prev = max(prev, cur)
    return spans


@dataclass(frozen=True)
class ClaimTokens:
    """A claim and the generated tokens that write it: ``token_start`` .. ``token_end`` (exclusive)."""

    span: ClaimSpan
    token_start: int
    token_end: int


def align_claims(spans: Sequence[ClaimSpan], token_spans: Sequence[tuple[int, int]]) -> list[ClaimTokens]:
    """The tokens of each claim: every token whose text overlaps the claim's characters."""
    out = []
    for s in spans:
        idx = [i for i, (a, b) in enumerate(token_spans) if b > a and a < s.end and b > s.start]
        if idx:
            out.append(ClaimTokens(s, idx[0], idx[-1] + 1))
    return out


def claim_signals(signals: AnswerSignals, claim: ClaimTokens) -> AnswerSignals:
    """The answer's signals seen by one claim: only the claim's content tokens count.

    Per-token arrays keep their length (so token positions stay the answer's); the input's
    features (novelty) are the answer's own."""
    content = np.asarray(signals.content, dtype=bool)
    mask = np.zeros(content.shape, dtype=bool)
    mask[claim.token_start: claim.token_end] = content[claim.token_start: claim.token_end]
    out = object.__new__(type(signals))  # a shallow copy with its own mask (no __init__ to re-run)
    out.__dict__.update(vars(signals))
    out.content = mask
    return out


def claim_map(maps: np.ndarray, content: np.ndarray, claim: ClaimTokens,
              totals: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray | None:
    """The claim's map: the mean of its content tokens' maps (all its tokens if none is content),
    each normalised to sum 1. ``maps`` (T, rows, cols) or (T, 1, N_img); returns one map of that shape.
    ``totals``: :func:`map_totals` of ``maps``, when the claims of one answer share them."""
    idx = np.arange(claim.token_start, claim.token_end)
    is_content = np.asarray(content, dtype=bool)[claim.token_start: claim.token_end]
    picked = idx[is_content] if is_content.any() else idx
    clipped, sums = map_totals(maps) if totals is None else totals
    m, total = clipped[picked], sums[picked]  # (k, ...), (k,)
    keep = total > 0
    if not keep.any():
        return None
    m = m[keep] / total[keep].reshape(-1, *([1] * (m.ndim - 1)))
    return (_ADD(m, axis=0) / m.shape[0]).astype(np.float32)  # m.mean(0): its sum and division, without its wrapper


def map_totals(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every token's map clipped at 0 in float64 and its sum: what :func:`claim_map` normalises by."""
    clipped = np.maximum(np.asarray(maps, dtype=np.float64), 0.0)  # np.clip(..., 0, None), without its wrapper
    return clipped, clipped.reshape(len(clipped), -1).sum(1)


_CONJ = re.compile(r"\b(and|or)\b", re.IGNORECASE)


def redact(text: str, claims: Sequence[ClaimSpan], remove: Sequence[int]) -> str:
    """``text`` without the claims at indices ``remove``, the rest kept as written.

    Between two kept claims stands the separator that stood before the later one; a list keeps its
    final conjunction ("a, b and c" without c reads "a and b"); a sentence that loses its first claim
    starts with a capital when it had one; what follows the last claim (a full stop) stays. An
    empty string when every claim is removed.

    >>> from fastrm_common.claims import split_claims
    >>> t = "A red circle, a blue square and a green cross."
    >>> cs = split_claims(t)
    >>> redact(t, cs, [1]), redact(t, cs, [0]), redact(t, cs, [2])
    ('A red circle and a green cross.', 'A blue square and a green cross.', 'A red circle, a blue square.')
    """
    drop = set(int(i) for i in remove)
    if not claims:
        return text
    kept = [i for i in range(len(claims)) if i not in drop]
    if not kept:
        return ""
    if not drop:
        return text
    gaps = [text[: claims[0].start]] + [text[claims[i - 1].end: claims[i].start] for i in range(1, len(claims))]
    tail = text[claims[-1].end:]
    out = gaps[0]
    seps = [gaps[kept[k]] for k in range(1, len(kept))]  # the separator before each later kept claim
    # a list keeps its final conjunction: "a, b and c" without c -> "a and b"
    last_gap = gaps[-1]
    if seps and _CONJ.search(last_gap) and not _CONJ.search(seps[-1]) and len(kept) < len(claims) \
            and kept[-1] != len(claims) - 1 and "." not in seps[-1] and "\n" not in seps[-1]:
        seps[-1] = last_gap
    for k, i in enumerate(kept):
        piece = claims[i].text
        if k == 0 and i != 0 and claims[0].text[:1].isupper() and (gaps[0].strip() == "" or gaps[0].rstrip().endswith((".", "!", "?"))):
            piece = piece[:1].upper() + piece[1:]
        if k:
            out += seps[k - 1]
        out += piece
    return out + tail


def split_and_align(answer: str, tokenizer: Any, token_ids: Sequence[int],
                    splitter: str | Callable[[str], list[ClaimSpan]],
                    prefixes: Sequence[str] | None = None) -> list[ClaimTokens]:
    """The claims of ``answer`` by ``splitter``, each with its tokens (claims no token writes are dropped;
    ``prefixes``: see :func:`token_char_spans`)."""
    spans = split_claims(answer, splitter)
    return align_claims(spans, token_char_spans(tokenizer, token_ids, answer, prefixes))


def score_claims(answer: str, token_ids: Sequence[int], tokenizer: Any, scored: "RowScoring", maps: np.ndarray,
                 splitter: str | Callable[[str], list[ClaimSpan]], scorer: Any, claim_scorer: Any | None,
                 tags: Sequence[str] = ()) -> list:
    """Every claim of one answer through the pipeline: its tokens, its signals (the answer's, over its
    own tokens), every score, its verdict and its map, as :class:`guardrail.result.Claim`.

    ``scored`` is the answer's :class:`~guardrail.answers.pipeline.RowScoring` (its signals, verdict
    and per-token score values, which its claims share). ``scorer`` computes the observed scores;
    ``claim_scorer`` (a :class:`~guardrail.answers.pipeline.Scorer` on a claim calibration) the
    verdict of each claim of a several-claim answer. A single claim is the whole answer and takes
    the answer's verdict; without a claim calibration the claims of a several-claim answer have
    none (*unscored*).
    """
    signals, token_memo = scored.signals, scored.token_memo
    answer_verdict = (scored.score, scored.verdict, scored.verdict_reason)
    prefixes = decode_prefixes(tokenizer, token_ids, skip_special_tokens=True)  # decoded once for both alignments
    claims = split_and_align(answer, tokenizer, token_ids, splitter, prefixes)
    if not claims and answer.strip():  # a short answer (no claim the splitter knows) is one claim
        spans = token_char_spans(tokenizer, token_ids, answer, prefixes)
        claims = align_claims([ClaimSpan(0, len(answer), answer, "answer")], spans)
    totals = map_totals(maps) if claims else None
    return [_score_one(k, c, signals, maps, scorer, claim_scorer, tags, whole=len(claims) == 1,
                       answer_verdict=answer_verdict, token_memo=token_memo, totals=totals) for k, c in enumerate(claims)]


def _score_one(k: int, c: ClaimTokens, signals: AnswerSignals, maps: np.ndarray, scorer: Any, claim_scorer: Any,
               tags: Sequence[str], *, whole: bool, answer_verdict: tuple, token_memo: dict | None = None,
               totals: tuple | None = None) -> Any:
    """One claim through the pipeline (see :func:`score_claims`)."""
    from guardrail.answers.pipeline import explain_verdict
    from guardrail.result import Claim

    sig = claim_signals(signals, c)
    if claim_scorer is not None and not whole:  # a one-claim answer keeps the answer's verdict
        group = claim_scorer.group(tags)
        scores, score, verdict = claim_scorer.evaluate(sig, group=group, token_memo=token_memo)
        reason = explain_verdict(claim_scorer.calibration, score, verdict, novelty=scores.get("novelty"), group=group)
        threshold = claim_scorer.threshold(tags)
    else:
        scores, _, _ = scorer.evaluate(sig, token_memo=token_memo)
        score, verdict, reason = answer_verdict if whole else (None, None, None)
        threshold = scorer.threshold(tags) if whole else None
    return Claim(index=k, start=c.span.start, end=c.span.end, token_start=c.token_start, token_end=c.token_end,
                 text=c.span.text, kind=c.span.kind, object=c.span.object, score=score, scores=scores,
                 threshold=threshold, verdict=verdict, verdict_reason=reason, map=claim_map(maps, signals.content, c, totals))


def claims_left(result: Any, stream: "ClaimStream | None", *, deferred: bool) -> list:
    """The claims a stream still owes once its final result is in: those its :class:`ClaimStream` did
    not give yet, or, ``deferred`` (claims judged only after the whole answer), every claim of a
    several-claim answer."""
    if stream is not None and stream.given:
        return list(result.claims[stream.given:])
    return list(result.claims) if deferred and len(result.claims) > 1 else []


def load_claim_calibration(calibration: Any, claims: Any, adapter: Any, proxy_hash: str,
                           model: Any, allow_unhashed: bool = False) -> tuple[Any | None, Any]:
    """The Guard's claim set-up: the claim calibration (loaded and checked against the model and
    proxy like the answer calibration) and the splitter (the calibration's own when the caller kept
    the default ``"clauses"``; None turns claims off).

    Raises:
        InputError: an unknown splitter name; CalibrationError: a calibration that is not claim-level.
        ConfigMismatchError: a calibration fitted with another model or proxy.
    """
    from calibration import Calibration
    from fastrm_common.claims import SPLITTERS
    from fastrm_common.errors import InputError
    from guardrail.answers.pipeline import check_calibration_identity

    if claims is not None and not callable(claims) and not isinstance(claims, str):
        raise InputError(f"claims must be a splitter name ({', '.join(SPLITTERS.names())}), a callable or None; "
                         f"got {type(claims).__name__}")
    if calibration is None:
        if isinstance(claims, str):
            SPLITTERS.get(claims)  # an unknown name fails here, before any call
        return None, claims
    if not isinstance(calibration, Calibration):
        calibration = Calibration.load(calibration)
    check_calibration_identity(calibration, adapter, model, proxy_hash, allow_unhashed, level="claim")
    if claims == "clauses" and calibration.splitter:
        claims = calibration.splitter
    if isinstance(claims, str):
        SPLITTERS.get(claims)
    return calibration, claims


class ClaimStream:
    """Claim verdicts while a stream runs: after each token, the claims of the text so far that are
    closed (a later claim has begun) and not yet given, each scored exactly as the final result
    will score it (the same signals over the same tokens), as :class:`guardrail.result.Claim`.

    Used by ``Guard.stream``; the last claim closes with the answer and comes with the final result.
    """

    def __init__(self, tokenizer: Any, eos_ids: Any, splitter: Any, scorer: Any, claim_scorer: Any | None,
                 tags: Sequence[str] = ()) -> None:
        self.tokenizer, self.eos_ids, self.splitter = tokenizer, set(eos_ids), splitter
        self.scorer, self.claim_scorer, self.tags = scorer, claim_scorer, tuple(tags)
        self.given = 0
        self._ids: list[int] = []  # the tokens seen so far and each prefix of them decoded, kept across
        self._prefixes: list[str] = []  # updates: a token's update decodes one more prefix, not all of them

    def update(self, token_ids: Sequence[int], cap: Any, recorder: Any) -> list:
        """New closed claims after ``token_ids`` (every token streamed so far)."""
        from guardrail.answers.pipeline import answer_signals, evidence_signals

        ids = [int(t) for t in token_ids]
        if any(t in self.eos_ids for t in ids):
            return []  # the answer is complete: the final result gives the rest
        if ids[: len(self._ids)] != self._ids:  # not a continuation of what was seen: start over
            self._ids, self._prefixes = [], []
        self._prefixes += decode_each(self.tokenizer, [ids[: i + 1] for i in range(len(self._ids), len(ids))],
                                      skip_special_tokens=True)
        self._ids = ids
        text = self._prefixes[-1].strip() if ids else ""  # decode(ids, skip_special_tokens=True), stripped
        claims = split_and_align(text, self.tokenizer, ids, self.splitter, self._prefixes)
        closed = claims[:-1]  # a claim is closed once a later one has begun
        if len(closed) <= self.given:
            return []
        n = closed[-1].token_end
        if n >= len(ids):
            return []
        tsig = recorder.prefix(n)
        if tsig.margin.shape[1] < n:
            return []
        maps = np.stack([_token_map(cap, i) for i in range(n)])
        feats = cap.features[0] if cap.prompt_features is not None else None
        ev = evidence_signals(cap, n)
        sig = answer_signals(ids[:n], self.tokenizer, maps=maps, token_logprob=tsig.token_logprob[0],
                             predictive_entropy=tsig.predictive_entropy[0], margin=tsig.margin[0], features=feats,
                             eos_ids=self.eos_ids, **({} if ev is None else {k: v[0] for k, v in ev.items()}))
        out, token_memo = [], {}
        for k in range(self.given, len(closed)):
            out.append(_score_one(k, closed[k], sig, maps, self.scorer, self.claim_scorer, self.tags,
                                  whole=False, answer_verdict=(None, None, None), token_memo=token_memo))
        self.given = len(closed)
        return out


def _token_map(cap: Any, i: int) -> np.ndarray:
    m = cap.map(i).numpy()
    return m if m.ndim == 2 else m[None]  # several regions: (1, N_img), as in the result's maps
