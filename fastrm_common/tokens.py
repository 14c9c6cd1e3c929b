"""Which generated tokens carry content: the one definition the Guard, calibration and distillation share.

Special tokens (BOS, EOS, padding, image and chat markers) and tokens that decode to
punctuation or whitespace only are not content: their relevancy maps are computed but never
scored, calibrated or distilled by default.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from fastrm_common.errors import InputError

__all__ = ["content_token_mask", "decode_each", "eos_token_ids", "special_token_ids"]


def _is_punctuation_or_blank(text: str) -> bool:
    """True when ``text`` holds only whitespace and Unicode punctuation (categories P*)."""
    return all(ch.isspace() or unicodedata.category(ch).startswith("P") for ch in text)


def content_token_mask(
    token_ids: Iterable[int] | Any,
    tokenizer: Any,
    *,
    extra_excluded_ids: Iterable[int] = (),
    texts: Sequence[str] | None = None,
    special_ids: Iterable[int] | None = None,
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
        texts: each token decoded on its own (``tokenizer.decode([id])``), when the caller has them
            already (the Guard does, for ``GuardResult.tokens``); decoded here otherwise.
        special_ids: :func:`special_token_ids` of ``tokenizer``, when the caller has read them once
            already (the Guard does, when it is built); read from the tokenizer otherwise.

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
        if hasattr(token_ids, "detach"):  # torch.Tensor
            token_ids = token_ids.detach().cpu().numpy()
        arr = np.asarray(token_ids)
        if arr.ndim != 1:
            raise InputError(f"token_ids must be one-dimensional (one id per token), got shape {arr.shape}")
        ids = [int(i) for i in arr.tolist()]
    excluded: set[int] = {int(i) for i in extra_excluded_ids}
    excluded.update(special_token_ids(tokenizer) if special_ids is None else special_ids)

    if texts is not None and len(texts) != len(ids):
        raise InputError(f"{len(texts)} token texts for {len(ids)} token ids")
    mask = np.zeros(len(ids), dtype=bool)
    cache: dict[int, bool] = {}
    for t, tid in enumerate(ids):
        if tid in excluded:
            continue
        if tid not in cache:
            text = tokenizer.decode([tid], skip_special_tokens=False) if texts is None else texts[t]
            # SentencePiece's word marker survives some decoders; it is a space
            text = text.replace("\u2581", " ")
            cache[tid] = not _is_punctuation_or_blank(text)
        mask[t] = cache[tid]
    return mask


def special_token_ids(tokenizer: Any) -> frozenset[int]:
    """The ids :func:`content_token_mask` excludes because of what the tokenizer says of them: its
    special ids (``all_special_ids``), its EOS and its pad ids. Reading them from a ``transformers``
    tokenizer costs more than the rest of the mask: read them once and pass them as ``special_ids``."""
    out = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or ())}
    for attr in ("eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, attr, None)
        if value is None:
            continue
        if isinstance(value, (list, tuple, set)):
            out.update(int(v) for v in value)
        else:
            out.add(int(value))
    return frozenset(out)


def decode_each(tokenizer: Any, sequences: Sequence[Sequence[int]], *, skip_special_tokens: bool = False) -> list[str]:
    """``[tokenizer.decode(s, skip_special_tokens=...) for s in sequences]``, the same strings, cheaper.

    A ``transformers`` fast tokenizer whose ``decode`` is the library's own and cleans up no spaces
    gives exactly its backend's ``decode``: that is called directly (one call per sequence, no
    conversion of the ids and no thread pool, unlike ``decode_batch``). Any other tokenizer is
    called as it is.
    """
    decode = _decoder(tokenizer)
    return [decode([int(i) for i in s], skip_special_tokens=skip_special_tokens) for s in sequences]


def decode_prefixes(tokenizer: Any, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> list[str]:
    """Each prefix of ``token_ids`` decoded: ``decode_each(tokenizer, [ids[:1], ids[:2], ...])``, the ids
    converted once rather than once per prefix."""
    ids, decode = [int(i) for i in token_ids], _decoder(tokenizer)
    return [decode(ids[: i + 1], skip_special_tokens=skip_special_tokens) for i in range(len(ids))]


def _decoder(tokenizer: Any) -> Callable[..., str]:
    """The backend's ``decode`` when it is exactly ``tokenizer.decode`` (:func:`decode_each`), else ``tokenizer.decode``."""
    return tokenizer._tokenizer.decode if _backend_decodes_exactly(tokenizer) else tokenizer.decode


def _backend_decodes_exactly(tokenizer: Any) -> bool:
    """Whether ``tokenizer.decode`` is its backend's decode and nothing more (see :func:`decode_each`)."""
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:  # another transformers layout: the general path
        return False
    cls = type(tokenizer)
    return (isinstance(tokenizer, TokenizersBackend) and cls.decode is PreTrainedTokenizerBase.decode
            and cls._decode is TokenizersBackend._decode and not getattr(tokenizer, "clean_up_tokenization_spaces", True)
            and callable(getattr(getattr(tokenizer, "_tokenizer", None), "decode", None)))


def eos_ids_of(source: Any) -> frozenset[int]:
    """The ids in ``source.eos_token_id`` (a generation config or a tokenizer): none, one or a list."""
    eos = getattr(source, "eos_token_id", None)
    if isinstance(eos, int):
        return frozenset({eos})
    if isinstance(eos, (list, tuple)):
        return frozenset(int(e) for e in eos)
    return frozenset()


def eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids of the model's generation config and of its tokenizer, together.

    Chat models often stop on a token the tokenizer does not call EOS (``<|im_end|>``, a list of
    stop ids in ``generation_config.eos_token_id``); pass these to
    :func:`content_token_mask` as ``extra_excluded_ids``.
    """
    return set(eos_ids_of(getattr(model, "generation_config", None)) | eos_ids_of(tokenizer))
