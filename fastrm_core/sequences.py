"""Helpers on generated sequences shared by the gradient baseline and Grad-CAM.

Internal to fastrm_core (not re-exported): how to find the new tokens of a ``generate`` output
row, the ids ``generate`` stops on, and one unpadded row of a processor batch.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from fastrm_common.errors import InputError
from fastrm_common.tokens import eos_ids_of

__all__ = ["split_generated", "stop_token_ids", "unpad_row"]


def split_generated(
    prompt_ids: torch.Tensor, generated_ids: torch.Tensor, stop_ids: Collection[int] = ()
) -> torch.Tensor:
    """New tokens of one sequence (T,), given either the new tokens or the full ``generate`` output row.

    ``prompt_ids`` is the (possibly padded) prompt row as fed to ``generate``. Tokens after the first
    token in ``stop_ids`` (the padding of rows that finished early) are dropped; that token is kept.
    """
    gen = generated_ids.reshape(-1)
    prompt_len = prompt_ids.numel()
    if gen.numel() >= prompt_len and torch.equal(gen[:prompt_len].to(prompt_ids.device), prompt_ids):
        gen = gen[prompt_len:]
    if stop_ids:
        stops = torch.tensor(sorted(int(i) for i in stop_ids), device=gen.device, dtype=gen.dtype)
        hits = torch.isin(gen, stops).nonzero(as_tuple=True)[0]
        if hits.numel():
            gen = gen[: int(hits[0]) + 1]
    if gen.numel() == 0:
        raise InputError("generated_ids holds no generated token: nothing to explain")
    return gen


def stop_token_ids(model: nn.Module) -> frozenset[int]:
    """Every end-of-sequence id of the model's generation config: the ids ``generate`` stops on.

    A chat model may list several (``generation_config.eos_token_id = [2, 32007]``); all count.
    """
    return eos_ids_of(getattr(model, "generation_config", None))


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
