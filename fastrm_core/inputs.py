"""One way to turn (image, prompt) pairs into model inputs: the Guard, calibration and distillation share it.

The processor runs with left padding (decoder-only generation appends on the right, so every
row's last prompt token must sit in the last column), the tensors move to the model's device
and the floating ones (pixel values) take the model's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastrm_common.tokenizer_lock import tokenizer_lock

__all__ = ["prepare_inputs"]


def prepare_inputs(model: nn.Module, processor, images: Sequence, prompts: Sequence[str]) -> dict:
    """Processor output for a batch of (PIL image, prompt) pairs, ready for ``model.generate(**inputs)``.

    ``input_ids`` and ``attention_mask`` are (B, N), left-padded when B > 1; ``pixel_values``
    is in the model's dtype. The tokenizer's ``padding_side`` setting is left as it is; the
    processor's own errors propagate unchanged (callers decide what they mean).
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    # left padding asked per call: the shared tokenizer's padding_side is never mutated (a
    # concurrent call on the same processor could see it)
    with tokenizer_lock(processor):  # the tokenizer's padding state is shared by threads
        inputs = processor(images=list(images), text=list(prompts), return_tensors="pt", padding=len(prompts) > 1,
                           padding_side="left")
    param = next(model.parameters())
    out = {}
    for key, value in inputs.items():
        if torch.is_tensor(value):
            value = value.to(param.device)
            if value.is_floating_point():
                value = value.to(param.dtype)
        out[key] = value
    return out
