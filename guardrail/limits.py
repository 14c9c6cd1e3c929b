"""Cost limits and checks on what a caller hands the Guard, applied before any model work.

:class:`Limits` bounds the work one guarded call may ask for (image pixels and aspect
ratio, question length in characters and tokens, answer length, escalation handler time).
The check functions turn every bad argument into an :class:`~fastrm_common.errors.InputError`
naming the argument, so a caller never sees a raw ``ValueError``/``TypeError`` from
transformers or PIL, and a hostile input never holds the model lock.

    >>> Limits().max_new_tokens
    1024
    >>> check_tags(["medical"])
    ['medical']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastrm_common.errors import InputError
from fastrm_common.images import DEFAULT_MAX_IMAGE_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS
from fastrm_common.tokenizer_lock import tokenizer_lock

__all__ = ["Limits", "check_generate_kwargs", "check_question", "check_tags"]

# model.generate arguments that are not GenerationConfig fields but are legitimate.
_GENERATE_EXTRAS = frozenset({
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "negative_prompt_ids", "negative_prompt_attention_mask", "generation_config", "use_model_defaults",
    "custom_generate", "tokenizer", "assistant_tokenizer",
})
_REFUSED = ("return_dict_in_generate", "streamer", "num_return_sequences", "num_beams")


@dataclass(frozen=True)
class Limits:
    """Bounds on one guarded call, checked before the model runs; each refusal is an ``InputError``.

    - ``max_image_pixels``: width x height of an input image (read from the file header, before decoding).
    - ``max_image_aspect_ratio``: long side / short side.
    - ``max_question_chars``: characters of a question (checked before tokenising).
    - ``max_question_tokens``: tokens of a question, without the prompt template and image tokens.
    - ``max_new_tokens``: the largest ``max_new_tokens`` a caller may ask for.
    - ``handler_timeout_s``: seconds an escalation handler may run before the escalation counts
      as failed (the policy's ``on_error`` applies); the handler runs outside the model lock.
    - ``telemetry_timeout_s``: seconds a call waits for span processors when a span starts or
      ends; a processor that raises or is still busy after that is ignored.
    """

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_aspect_ratio: float = DEFAULT_MAX_IMAGE_ASPECT_RATIO
    max_question_chars: int = 16_384
    max_question_tokens: int = 2_048
    max_new_tokens: int = 1_024
    handler_timeout_s: float = 10.0
    telemetry_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_question_chars", "max_question_tokens", "max_new_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"Limits.{name} must be a positive integer, got {value!r}")
        for name in ("max_image_aspect_ratio", "handler_timeout_s", "telemetry_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise InputError(f"Limits.{name} must be a positive finite number, got {value!r}")
        if self.max_image_aspect_ratio < 1:
            raise InputError(f"Limits.max_image_aspect_ratio must be at least 1, got {self.max_image_aspect_ratio!r}")


def check_tags(tags: Any) -> list[str]:
    """The request tags as a sorted list of distinct strings.

    A plain string is refused (``tags="medical"`` would otherwise become the tags
    ``m, e, d, i, c, a, l`` and silently miss every ``tags_any: [medical]`` rule).
    """
    if isinstance(tags, (str, bytes)):
        raise InputError(f"tags must be a collection of strings, got the string {tags!r}; write tags=[{tags!r}]")
    if tags is None:
        return []
    if not isinstance(tags, Iterable):
        raise InputError(f"tags must be a collection of strings, got {type(tags).__name__}")
    out = list(tags)
    bad = [repr(t) for t in out if not isinstance(t, str)]
    if bad:
        raise InputError(f"tags must be strings; got {', '.join(bad[:5])}")
    return sorted(set(out))


def check_question(question: Any, limits: Limits, tokenizer: Any = None) -> str:
    """``question`` if it is a non-empty string within the character and token limits."""
    if not isinstance(question, str):
        raise InputError(f"the question must be a string, got {type(question).__name__}")
    if not question.strip():
        raise InputError("the question is empty")
    if len(question) > limits.max_question_chars:
        raise InputError(
            f"the question has {len(question)} characters; the limit is {limits.max_question_chars} "
            "(Limits(max_question_chars=...))"
        )
    if tokenizer is not None:
        try:
            with tokenizer_lock(tokenizer):  # shared padding state: see fastrm_common.tokenizer_lock
                n = len(tokenizer(question, add_special_tokens=False)["input_ids"])
        except Exception as exc:  # a tokenizer may reject odd text in its own way
            raise InputError(f"the question cannot be tokenised: {type(exc).__name__}: {exc}") from None
        if n > limits.max_question_tokens:
            raise InputError(
                f"the question has {n} tokens; the limit is {limits.max_question_tokens} "
                "(Limits(max_question_tokens=...))"
            )
    return question


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_generate_kwargs(kwargs: Mapping[str, Any], limits: Limits, *, default_max_new_tokens: int) -> dict[str, Any]:
    """Validated ``model.generate`` arguments with the Guard's defaults filled in.

    Refused with ``InputError``: names that ``generate`` does not know, beams / several
    sequences / ``return_dict_in_generate`` / ``streamer`` (the Guard needs one greedy or
    sampled sequence per prompt), and out-of-range values of the common numeric knobs.
    """
    from transformers import GenerationConfig

    known = GenerationConfig()
    for name in kwargs:
        if not isinstance(name, str) or not (hasattr(known, name) or name in _GENERATE_EXTRAS):
            raise InputError(f"unknown generate argument {name!r}")
    for name in _REFUSED:
        if name in kwargs and not (name in ("num_beams", "num_return_sequences") and kwargs[name] == 1):
            raise InputError(
                f"generate argument {name!r} is not supported under guard (greedy or sampling, one sequence per prompt)"
            )
    out = {"max_new_tokens": default_max_new_tokens, "do_sample": False, **kwargs}
    n = out["max_new_tokens"]
    if not _is_int(n) or not 1 <= n <= limits.max_new_tokens:
        raise InputError(
            f"max_new_tokens must be an integer from 1 to {limits.max_new_tokens} (Limits(max_new_tokens=...)), got {n!r}"
        )
    m = out.get("min_new_tokens")
    if m is not None and (not _is_int(m) or not 0 <= m <= n):
        raise InputError(f"min_new_tokens must be an integer from 0 to max_new_tokens ({n}), got {m!r}")
    if "max_length" in out:
        raise InputError("use max_new_tokens, not max_length, under guard")
    if not isinstance(out["do_sample"], bool):
        raise InputError(f"do_sample must be true or false, got {out['do_sample']!r}")
    for name, low, high in (("temperature", 0.0, None), ("top_p", 0.0, 1.0), ("repetition_penalty", 0.0, None)):
        v = out.get(name)
        if v is not None and (not _is_number(v) or v <= low or (high is not None and v > high)):
            rng = f"in ({low:g}, {high:g}]" if high is not None else f"> {low:g}"
            raise InputError(f"{name} must be a finite number {rng}, got {v!r}")
    k = out.get("top_k")
    if k is not None and (not _is_int(k) or k < 0):
        raise InputError(f"top_k must be a non-negative integer, got {k!r}")
    return out
