"""Helpers on generated sequences shared by the gradient baseline and Grad-CAM.

Internal to fastrm_core (not re-exported): how to find the new tokens of a ``generate`` output
row, the model's first end-of-sequence id, and one unpadded row of a processor batch.
"""

from __future__ import annotations

import torch
from torch import nn

from fastrm_core.errors import InputError

__all__ = ["first_eos_id", "split_generated", "unpad_row"]


def split_generated(prompt_ids: torch.Tensor, generated_ids: torch.Tensor, eos_id: int | None) -> torch.Tensor:
    """New tokens of one sequence (T,), given either the new tokens or the full ``generate`` output row.

    ``prompt_ids`` is the (possibly padded) prompt row as fed to ``generate``. Tokens after the first
    end-of-sequence token (the padding of rows that finished early) are dropped.
    """
    gen = generated_ids.reshape(-1)
    prompt_len = prompt_ids.numel()
    if gen.numel() >= prompt_len and torch.equal(gen[:prompt_len].to(prompt_ids.device), prompt_ids):
        gen = gen[prompt_len:]
    if eos_id is not None:
        hits = (gen == eos_id).nonzero(as_tuple=True)[0]
        if hits.numel():
            gen = gen[: int(hits[0]) + 1]
    if gen.numel() == 0:
        raise InputError("generated_ids holds no generated token: nothing to explain")
    return gen


def first_eos_id(model: nn.Module) -> int | None:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    return None if eos is None else int(eos)


def unpad_row(inputs: dict, b: int) -> tuple[torch.Tensor, dict]:
    """Row b of a processor batch without its padding: (input_ids (S,), extra model kwargs)."""
    ids = inputs["input_ids"][b]
    mask = inputs.get("attention_mask")
    if mask is not None:
        ids = ids[mask[b].bool()]
    extra = {}
    for key, value in inputs.items():
        if key in {"input_ids", "attention_mask"}:
            continue
        if torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == inputs["input_ids"].shape[0]:
            extra[key] = value[b : b + 1]
        else:
            extra[key] = value
    return ids, extra
