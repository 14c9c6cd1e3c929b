"""Removing image patches from a VLM's input, for perturbation curves.

"Removing" a patch replaces its image embedding where the language model receives it (the
``inputs_embeds`` at that image token, i.e. LLaVA's projected patch, Qwen2-VL's merged patch)
by a neutral value, through forward hooks:

* ``fill="zero"`` (default): the zero vector. The language model still sees an image token
  at that position (positions and sequence length are unchanged) but it carries no content.
* ``fill="mean"``: the mean embedding of the patches of the same image region: an "average"
  patch, closer to the embedding distribution, that still removes the patch's own content.

Patches are counted flat over a prompt's image regions (:meth:`VLMAdapter.regions`), the order
of every relevancy map. Pixels are not touched: masking pixels would leak through the vision
tower's attention into neighbouring patches, while replacing embeddings removes exactly the
chosen tokens. The ranking, the fractions and the answers are handled by
:mod:`fastrm_core.distill.evaluate`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal

import torch
from torch import nn

from fastrm_core.adapters import VLMAdapter
from fastrm_common.errors import InputError

__all__ = ["FILLS", "generate_without_patches", "removed_patches"]

FILLS = ("zero", "mean")


@contextlib.contextmanager
def removed_patches(
    adapter: VLMAdapter, remove: torch.Tensor, fill: Literal["zero", "mean"] = "zero"
) -> Iterator[None]:
    """Inside the block, the prompt's image patches ``remove`` are replaced at the language model's input.

    Args:
        adapter: the model's adapter.
        remove: (B, N_img) bool, one row per prompt of the batch, flat over the row's image
            regions (row-major within each; a non-patch image token such as a kept CLS is never
            removed).
        fill: ``"zero"`` or ``"mean"`` (see the module docstring).

    A pre-hook on the model reads the prefill's ``input_ids`` (and what the adapter needs to find
    the regions); a pre-hook on the language model replaces the embeddings. Decoding steps (no
    image token) pass unchanged. The hooks are removed on exit, also on error.
    """
    if fill not in FILLS:
        raise InputError(f"unknown fill {fill!r}; expected one of: {', '.join(FILLS)}")
    if remove.dim() != 2:
        raise InputError(f"remove must be (B, N_img) bool, got shape {tuple(remove.shape)}")
    state: dict = {"regions": None}

    def before_model(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        state["regions"] = None
        if ids is not None and bool(torch.isin(ids, torch.tensor(sorted(adapter.placeholder_token_ids),
                                                                 device=ids.device)).any()):
            extra = {k: v for k, v in kwargs.items() if k != "input_ids"}
            state["regions"] = adapter.batch_regions({**extra, "input_ids": ids})

    def before_lm(module, args, kwargs):
        regions = state["regions"]
        embeds = kwargs.get("inputs_embeds")
        if regions is None or embeds is None:
            return None
        if len(regions) != remove.shape[0]:
            raise InputError(f"the removal mask has {remove.shape[0]} rows for a batch of {len(regions)} prompts")
        embeds = embeds.clone()
        for b, row in enumerate(regions):
            n = sum(r.size for r in row)
            if remove.shape[1] != n:
                raise InputError(f"remove must be (B, {n}) bool for this prompt's image tokens, got shape {tuple(remove.shape)}")
            mask = remove[b].to(embeds.device)
            start = 0
            for r in row:
                pos = r.positions.to(embeds.device)
                patches = embeds[b, pos]  # (N_r, D)
                if fill == "zero":
                    value = torch.zeros_like(patches)
                else:
                    value = patches.mean(dim=0, keepdim=True).expand_as(patches)
                embeds[b, pos] = torch.where(mask[start : start + r.size, None], value, patches)
                start += r.size
        return args, {**kwargs, "inputs_embeds": embeds}

    handles = [
        adapter.model.register_forward_pre_hook(before_model, with_kwargs=True),
        adapter.language_model.register_forward_pre_hook(before_lm, with_kwargs=True),
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def generate_without_patches(
    model: nn.Module,
    inputs: dict,
    remove: torch.Tensor,
    *,
    adapter: VLMAdapter,
    generate_kwargs: dict,
    batch_size: int = 32,
    fill: Literal["zero", "mean"] = "zero",
) -> list[torch.Tensor]:
    """Answer one prompt again once per removal mask; returns the new tokens of each run.

    Args:
        inputs: the processor output of ONE (image, prompt) (batch dimension 1).
        remove: (M, N_img) bool, the patches to remove in each of the M runs (flat over the
            prompt's image regions).
        generate_kwargs: passed to ``model.generate`` (greedy settings, max_new_tokens).
        batch_size: runs generated together (the prompt is repeated, so no padding is needed).

    Returns:
        M tensors of generated token ids (T_m,), in the order of ``remove``.
    """
    if inputs["input_ids"].shape[0] != 1:
        raise InputError("generate_without_patches answers one prompt; got a batch")
    prompt_len = inputs["input_ids"].shape[1]
    answers: list[torch.Tensor] = []
    for start in range(0, remove.shape[0], batch_size):
        chunk = remove[start : start + batch_size]  # (m, N)
        m = chunk.shape[0]
        batch = adapter.repeat_inputs(inputs, m)
        with removed_patches(adapter, chunk, fill):
            out = model.generate(**batch, **generate_kwargs)
        answers.extend(out[i, prompt_len:].cpu() for i in range(m))
    return answers
