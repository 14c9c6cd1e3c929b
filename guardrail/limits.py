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

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fastrm_common.errors import InputError
from fastrm_common.images import DEFAULT_MAX_IMAGE_ASPECT_RATIO, DEFAULT_MAX_IMAGE_PIXELS
from fastrm_common.tokenizer_lock import tokenizer_lock

__all__ = [
    "MAX_SEED",
    "MAX_TEMPERATURE",
    "MIN_SEED",
    "MIN_TEMPERATURE",
    "Limits",
    "check_generate_kwargs",
    "check_question",
    "check_sampling",
    "check_tags",
]

# model.generate arguments that are not GenerationConfig fields but are legitimate.
_GENERATE_EXTRAS = frozenset({
    "logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus", "assistant_model",
    "negative_prompt_ids", "negative_prompt_attention_mask", "generation_config", "use_model_defaults",
    "custom_generate", "tokenizer", "assistant_tokenizer",
})
_REFUSED = ("return_dict_in_generate", "streamer", "num_return_sequences", "num_beams")

# Sampling temperatures below MIN_TEMPERATURE are greedy in all but name, and tiny ones (5e-324) turn the
# logits into inf/nan inside generate (a RuntimeError deep in torch); above MAX_TEMPERATURE the
# distribution is uniform noise. The same bounds hold for repetition_penalty, which divides logits too.
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 100.0
# torch.manual_seed accepts [-2**63, 2**64 - 1]; outside it raises a ValueError.
MIN_SEED = -(2**63)
MAX_SEED = 2**64 - 1


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


@functools.lru_cache(maxsize=1)
def _default_generation_config() -> Any:
    """A default ``GenerationConfig``, built once: what names ``generate`` knows (never modified)."""
    from transformers import GenerationConfig

    return GenerationConfig()


def check_generate_kwargs(kwargs: Mapping[str, Any], limits: Limits, *, default_max_new_tokens: int) -> dict[str, Any]:
    """Validated ``model.generate`` arguments with the Guard's defaults filled in.

    Refused with ``InputError``: names that ``generate`` does not know, beams / several
    sequences / ``return_dict_in_generate`` / ``streamer`` (the Guard needs one greedy or
    sampled sequence per prompt), and out-of-range values of the common numeric knobs.
    """
    known = _default_generation_config()
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
    check_sampling(temperature=out.get("temperature"), top_p=out.get("top_p"),
                   repetition_penalty=out.get("repetition_penalty"))
    k = out.get("top_k")
    if k is not None and (not _is_int(k) or k < 0):
        raise InputError(f"top_k must be a non-negative integer, got {k!r}")
    return out


def check_sampling(*, temperature: Any = None, top_p: Any = None, repetition_penalty: Any = None,
                   seed: Any = None) -> None:
    """Raise :class:`InputError` naming the first sampling setting out of range (None: not given).

    The one check of sampling settings, shared by :meth:`Guard.generate <guardrail.Guard.generate>`
    (through :func:`check_generate_kwargs`) and ``guardrail serve`` (which answers it with a 400):

    - ``temperature`` and ``repetition_penalty``: finite numbers from ``MIN_TEMPERATURE`` (0.01) to
      ``MAX_TEMPERATURE`` (100); for greedy decoding use ``do_sample=False`` (the server: temperature 0).
    - ``top_p``: a finite number in (0, 1].
    - ``seed``: an integer from ``MIN_SEED`` (-2**63) to ``MAX_SEED`` (2**64 - 1), what ``torch.manual_seed`` takes.

        >>> check_sampling(temperature=0.7, top_p=0.9, seed=3)
        >>> check_sampling(temperature=5e-324)
        Traceback (most recent call last):
        ...
        fastrm_common.errors.InputError: temperature must be a finite number from 0.01 to 100, got 5e-324
    """
    for name, v in (("temperature", temperature), ("repetition_penalty", repetition_penalty)):
        if v is not None and (not _is_number(v) or not MIN_TEMPERATURE <= v <= MAX_TEMPERATURE):
            raise InputError(f"{name} must be a finite number from {MIN_TEMPERATURE:g} to {MAX_TEMPERATURE:g}, "
                             f"got {v!r}")
    if top_p is not None and (not _is_number(top_p) or not 0.0 < top_p <= 1.0):
        raise InputError(f"top_p must be a finite number in (0, 1], got {top_p!r}")
    if seed is not None and (not _is_int(seed) or not MIN_SEED <= seed <= MAX_SEED):
        shown = repr(seed) if not _is_int(seed) or abs(seed) < 10**30 else f"an integer of {len(str(abs(seed)))} digits"
        raise InputError(f"seed must be an integer from -2**63 to 2**64 - 1, got {shown}")
