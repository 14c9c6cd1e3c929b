"""The generation step shared by the dataset builder and the evaluation.

One record = one image + one question. The prompt is built with the processor's chat
template when it has one (LLaVA-1.5 checkpoints and the ShapesVQA reference model do),
else with LLaVA-1.5's ``"USER: <image>\\n{question} ASSISTANT:"``; an optional suffix
(the FastRM paper uses ``"Answer the question using up to two words."``) is appended to
the question. Decoding is greedy; the image placeholder token is suppressed so a
generated sequence can always be fed back to the model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastrm_core.adapters import VLMAdapter
from fastrm_core.inputs import prepare_inputs as _prepare_batch
from fastrm_common.errors import DataError
from fastrm_common.images import load_image as _load_image
from fastrm_common.prompting import PLAIN_TEMPLATE, build_prompt
from fastrm_common.tokens import content_token_mask, eos_token_ids

__all__ = ["PLAIN_TEMPLATE", "build_prompt", "content_mask", "greedy_kwargs", "load_image", "prepare_inputs"]

def load_image(path: str | Path):
    """The record's image as RGB. Raises :class:`DataError` (with the reason) when missing or unreadable."""
    return _load_image(path, error=DataError)


def prepare_inputs(model: nn.Module, processor, image, prompt: str) -> dict:
    """Processor output for one (image, prompt), on the model's device, pixels in the model's dtype
    (:func:`fastrm_core.inputs.prepare_inputs` for a batch of one)."""
    return _prepare_batch(model, processor, [image], [prompt])


def greedy_kwargs(adapter: VLMAdapter, max_new_tokens: int) -> dict:
    """``generate`` keyword arguments of every distillation generation: greedy, no image tokens."""
    return dict(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        suppress_tokens=sorted(adapter.placeholder_token_ids),
    )


def content_mask(model: nn.Module, processor, token_ids: torch.Tensor) -> torch.Tensor:
    """(T,) bool: the generated tokens that carry content, as the Guard scores them
    (:func:`fastrm_common.tokens.content_token_mask`: no special, end-of-sequence or punctuation-only token)."""
    tok = processor.tokenizer
    mask = content_token_mask(token_ids.reshape(-1).cpu(), tok, extra_excluded_ids=eos_token_ids(model, tok))
    return torch.from_numpy(mask)
