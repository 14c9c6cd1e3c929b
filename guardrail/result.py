"""Typed results of a guarded call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema

from fastrm_common.errors import GuardrailError

__all__ = ["BatchItemError", "Claim", "GuardResult", "Timings", "TokenEvent"]


@dataclass(frozen=True)
class BatchItemError:
    """The place of a refused item in ``Guard.generate_batch(items, return_errors=True)``'s results.

    ``index`` is the item's position in ``items``; ``error`` the refusal (an
    :class:`~fastrm_common.errors.InputError` whose message starts with ``item <index>:``).

        >>> results = guard.generate_batch(items, return_errors=True)  # doctest: +SKIP
        >>> answers = [r.answer for r in results if not isinstance(r, BatchItemError)]  # doctest: +SKIP
    """

    index: int
    error: GuardrailError

    def __str__(self) -> str:
        return str(self.error)


def _to_float32_array(value: Any) -> np.ndarray:
    """Accept an array or the nested lists its JSON form holds; always give float32."""
    try:
        return np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"expected an array of numbers (nested lists), got {type(value).__name__}: {exc}") from exc


def _to_rounded_lists(value: np.ndarray) -> list:
    # 6 decimals keep a map's JSON compact; probabilities in [0, 1] come back within 5e-7.
    return np.asarray(value, dtype=np.float32).round(6).tolist()


# A float32 array that serialises as nested lists (rounded to 6 decimals) and loads back from them,
# so results round-trip through JSON: ``GuardResult.model_validate_json(r.model_dump_json())``.
MapArray = Annotated[
    np.ndarray,
    PlainValidator(_to_float32_array),
    PlainSerializer(_to_rounded_lists, return_type=list),
    WithJsonSchema({"type": "array", "description": "nested lists of float32, rounded to 6 decimals"}),
]


class Timings(BaseModel):
    """Wall-clock seconds: ``model_s`` is ``model.generate`` (with the capture hooks), ``guard_s`` the rest."""

    model_config = ConfigDict(extra="forbid")

    model_s: float = 0.0
    guard_s: float = 0.0
    total_s: float = 0.0


class TokenEvent(BaseModel):
    """One generated token with its map, as :meth:`guardrail.Guard.stream` yields it."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    index: int
    token_id: int
    token: str
    map: MapArray = Field(description="(rows, cols) proxy probabilities")
    entropy: float = Field(description="normalised entropy of the map, in [0, 1]; higher = more diffuse")


class MapRegion(BaseModel):
    """One grid of image tokens in a prompt: the picture's index, what view of it (``full``, ``base``,
    ``hires``, ``tile``, ``global``, ``crop``) and its (rows, cols) (see :mod:`fastrm_core.regions`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image: int
    kind: str
    grid: tuple[int, int]


class Claim(BaseModel):
    """One claim of an answer (a span that asserts one thing) with its own scores, verdict and map.

    ``start``/``end``: its characters in ``GuardResult.answer``; ``token_start``/``token_end``: the
    generated tokens that write it (end exclusive); ``kind``: what the splitter found (``sentence``,
    ``clause``, ``object`` ...); ``object``: the object an object mention names. ``scores`` are the
    answer's scores computed over the claim's tokens alone; ``score``/``verdict``/``threshold``
    come from the claim calibration (a single claim that is the whole answer takes the answer's;
    None: unscored); ``map`` is the mean of its content tokens' maps, each normalised to sum 1
    (the shape of one token's map); ``redacted``: removed from ``GuardResult.text`` by ``redact``.
    """

    model_config = ConfigDict(extra="forbid")

    index: int
    start: int
    end: int
    token_start: int
    token_end: int
    text: str
    kind: str
    object: Optional[str] = None
    score: Optional[float] = None
    scores: dict[str, Optional[float]] = Field(default_factory=dict)
    threshold: Optional[float] = None
    verdict: Optional[Literal["confident", "uncertain"]] = None
    verdict_reason: Optional[str] = None
    map: Optional[MapArray] = None
    redacted: bool = False


class GuardResult(BaseModel):
    """Everything one guarded call produced.

    ``answer`` is what the model said; ``text`` is what the policy lets the user see
    (the answer, or an abstain/withheld message). ``maps`` is (T, rows, cols) with one
    map per generated token (the end-of-sequence token included) when the prompt's image has one
    region (LLaVA-1.5, Qwen2-VL); with several regions (a base and a high-resolution view, tiles)
    it is (T, 1, N_img), every image token in one line, flat over ``regions`` in order
    (:meth:`region_maps` cuts it into one grid per region). ``entropies`` (T,)
    their entropies (normalised by log N_img when the calibration was fitted on normalised
    entropies, its ``entropy_normalized``; raw nats otherwise) and ``content`` (T,) which of
    them count in the score. An answer without content tokens has ``score=None`` and the
    verdict ``uncertain``.
    ``score`` is the value of the calibration's score (``calibration.score``: map entropy, token
    probability, fused, ...; higher = more uncertain); the answer is ``confident`` when
    ``score < threshold`` (and, with a novelty gate, the input is not novel). ``scores`` holds every
    score the guard computed, by name (see docs/calibration.md). Without a calibration
    (observe-only), ``verdict``, ``score`` and ``threshold`` are None: the call is *unscored*,
    and the policy decides on ``scores`` or on ``verdict: unscored``. When the guard itself failed,
    ``error`` says why, ``unguarded`` is true and the policy's ``on_error`` decided.
    ``verdict_reason`` says what decided the verdict (score against threshold, the novelty gate,
    a calibration without threshold, nothing to score); ``warnings`` what the caller should know
    (content of the image cropped away, ``image_cropped``; an empty answer).

    A result round-trips through JSON: ``GuardResult.model_validate_json(r.model_dump_json())``
    gives it back, with ``maps`` as a float32 array rounded to 6 decimals (within 5e-7).
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    question: str
    answer: str
    text: str
    token_ids: list[int]
    tokens: list[str]
    maps: Optional[MapArray] = None
    regions: list[MapRegion] = Field(default_factory=list)
    entropies: list[float] = Field(default_factory=list)
    content: list[bool] = Field(default_factory=list)
    score: Optional[float] = None
    scores: dict[str, Optional[float]] = Field(default_factory=dict)
    threshold: Optional[float] = None
    patch_threshold: Optional[float] = Field(
        default=None, description="the proxy's classification threshold: a patch with probability >= it is relevant")
    verdict: Optional[Literal["confident", "uncertain"]] = None
    verdict_reason: Optional[str] = Field(
        default=None, description="why the verdict: the score against the threshold, the novelty gate, a "
                                  "calibration that marks nothing confident, or an answer with nothing to score")
    action: Literal["allow", "flag", "redact", "abstain", "escalate"]
    rule: str
    reason: str
    flagged: bool = False
    unguarded: bool = False
    policy_id: str
    policy_version: str
    finish_reason: Literal["stop", "length"] = "stop"
    error: Optional[str] = None
    tags: list[str] = Field(default_factory=list)
    image_cropped: Optional[float] = Field(
        default=None, description="share of the image's area the model never saw (cut away by the processor's "
                                  "crop) when that part holds content (is not one flat colour); None otherwise")
    claims: list[Claim] = Field(
        default_factory=list, description="the answer's claims in order (guardrail.answers.claims); one for a short answer")
    warnings: list[str] = Field(
        default_factory=list, description="what the user should know about this call: content cropped away, "
                                          "an empty answer")
    prompt_tokens: Optional[int] = Field(
        default=None, description="tokens of this row's prompt as the model saw it (image tokens included, "
                                  "padding excluded); None on results built by hand")
    timings: Timings = Field(default_factory=Timings)

    @property
    def grid(self) -> Optional[tuple[int, int]]:
        """(rows, cols) of the maps ((1, N_img) with several regions), or None when there are none."""
        return None if self.maps is None else tuple(self.maps.shape[1:])

    def region_maps(self) -> list[np.ndarray]:
        """One (T, rows, cols) map per image region (``regions``), cut from ``maps``; [] without maps."""
        if self.maps is None:
            return []
        maps = np.asarray(self.maps)
        if not self.regions:
            return [maps]
        flat = maps.reshape(maps.shape[0], -1)  # (T, N_img)
        out, start = [], 0
        for r in self.regions:
            n = r.grid[0] * r.grid[1]
            out.append(flat[:, start : start + n].reshape(maps.shape[0], *r.grid))
            start += n
        return out

    def relevant_patches(self) -> Optional[np.ndarray]:
        """(T, rows, cols) bool: the patches each token's map calls relevant (``maps >= patch_threshold``).

        ``patch_threshold`` is the proxy's ``classification_threshold`` (0.5 unless the proxy says
        otherwise). None when the call has no maps (or no threshold). The entropy and the verdict
        use the probabilities, never this binary view.
        """
        if self.maps is None or self.patch_threshold is None:
            return None
        return np.asarray(self.maps) >= self.patch_threshold

    @property
    def answer_map(self) -> Optional[np.ndarray]:
        """(rows, cols) mean map over the content tokens (all tokens if none): where the answer looked."""
        if self.maps is None or len(self.maps) == 0:
            return None
        keep = np.asarray(self.content, dtype=bool) if any(self.content) else np.ones(len(self.maps), dtype=bool)
        return self.maps[keep].mean(axis=0)
