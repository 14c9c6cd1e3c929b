"""Helpers on generated sequences shared by the gradient baseline and Grad-CAM.

Internal to fastrm_core (not re-exported): how to find the new tokens of a ``generate`` output
row and the ids ``generate`` stops on (one unpadded row of a batch is the adapter's
:meth:`~fastrm_core.adapters.VLMAdapter.row_inputs`).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import nn

from fastrm_common.errors import InputError
from fastrm_common.tokens import eos_ids_of

__all__ = ["split_generated", "stop_token_ids"]


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
