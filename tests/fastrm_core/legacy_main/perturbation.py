"""FROZEN COPY of main's perturbation before #16 (commit d047df1), the reference of test_llava_unchanged.py. Do not edit."""
# ruff: noqa
"""Removing image patches from a VLM's input, for perturbation curves.

"Removing" a patch replaces its projected image embedding (the output of LLaVA's
``multi_modal_projector``, i.e. exactly what the language model receives at that image
token) by a neutral value, through a forward hook:

* ``fill="zero"`` (default): the zero vector. The language model still sees an image token
  at that position (positions and sequence length are unchanged) but it carries no content.
* ``fill="mean"``: the mean embedding of the image's patches: an "average" patch, closer to
  the embedding distribution, that still removes the patch's own content.

Pixels are not touched: masking pixels would leak through the vision tower's attention into
neighbouring patches, while replacing embeddings removes exactly the chosen tokens. The
ranking, the fractions and the answers are handled by :mod:`fastrm_core.distill.evaluate`.
"""


import contextlib
from typing import Iterator, Literal

import torch
from torch import nn

from fastrm_core.adapters import VLMAdapter
from fastrm_common.errors import InputError, UnsupportedModelError

__all__ = ["FILLS", "generate_without_patches", "removed_patches"]

FILLS = ("zero", "mean")


def _projector(adapter: VLMAdapter) -> nn.Module:
    model = adapter.model
    for owner in (getattr(model, "model", None), model):
        proj = getattr(owner, "multi_modal_projector", None)
        if proj is not None:
            return proj
    raise UnsupportedModelError(
        f"patch removal hooks the multi-modal projector; {type(model).__name__} has no `multi_modal_projector`"
    )


@contextlib.contextmanager
def removed_patches(
    adapter: VLMAdapter, remove: torch.Tensor, fill: Literal["zero", "mean"] = "zero"
) -> Iterator[None]:
    """Inside the block, every image the model encodes has the patches ``remove`` replaced.

    Args:
        adapter: the model's adapter.
        remove: (B, N_patches) bool, one row per image of the batch (row-major patch order;
            a leading non-patch image token, e.g. a kept CLS, is never removed).
        fill: ``"zero"`` or ``"mean"`` (see the module docstring).

    The hook is removed on exit, also on error.
    """
    if fill not in FILLS:
        raise InputError(f"unknown fill {fill!r}; expected one of: {', '.join(FILLS)}")
    rows, cols = adapter.grid
    if remove.dim() != 2 or remove.shape[1] != rows * cols:
        raise InputError(f"remove must be (B, {rows * cols}) bool, got shape {tuple(remove.shape)}")
    offset = adapter.image_token_offset

    def hook(module, args, output):
        emb = output  # (B_img, N_tok, D)
        if emb.shape[0] != remove.shape[0] or emb.shape[1] != offset + rows * cols:
            raise InputError(
                f"the projector produced {tuple(emb.shape[:2])} image embeddings but the removal mask is "
                f"{tuple(remove.shape)} (one row per image, {offset} leading non-patch token(s))"
            )
        patches = emb[:, offset:]  # (B_img, N, D)
        mask = remove.to(emb.device)[..., None]  # (B_img, N, 1)
        if fill == "zero":
            value = torch.zeros_like(patches)
        else:
            value = patches.mean(dim=1, keepdim=True).expand_as(patches)
        return torch.cat([emb[:, :offset], torch.where(mask, value, patches)], dim=1)

    handle = _projector(adapter).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


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
        remove: (M, N_patches) bool, the patches to remove in each of the M runs.
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
        batch = {k: (v.expand(m, *v.shape[1:]) if torch.is_tensor(v) and v.dim() and v.shape[0] == 1 else v)
                 for k, v in inputs.items()}
        with removed_patches(adapter, chunk, fill):
            out = model.generate(**batch, **generate_kwargs)
        answers.extend(out[i, prompt_len:].cpu() for i in range(m))
    return answers
