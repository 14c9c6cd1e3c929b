"""PaliGemma (``PaliGemmaForConditionalGeneration``): ``image_seq_length`` image tokens per image, first in the prompt, one square grid.

The SigLIP tower's patches go to the language model one token each, row-major. The processor
writes ``<image>`` * image_seq_length per image, then ``<bos>``, the prompt and a newline; that
whole prefix has ``token_type_ids`` 0 and attends bidirectionally, generated tokens are the causal
suffix (``token_type_ids`` 1). There is no chat template: a prompt is the prefix form.
"""

from __future__ import annotations

import math

import torch

from fastrm_common.errors import InputError
from fastrm_core.adapters import register_adapter
from fastrm_core.families._base import LayoutAdapter
from fastrm_core.families._layout import RowImages, fixed_blocks, grid_positions, split_counts
from fastrm_core.regions import ImageRegion

__all__ = ["PaliGemmaAdapter", "batch_images", "paligemma_row_images"]


def paligemma_row_images(input_ids: torch.Tensor, image_token_id: int, image_seq_length: int, *,
                         first_image: int = 0) -> RowImages:
    """Regions of one row (S,): one side x side ``full`` grid per block of ``image_seq_length`` image tokens."""
    side = math.isqrt(int(image_seq_length))
    if side * side != image_seq_length:
        raise InputError(f"paligemma: image_seq_length {image_seq_length} is not a square")
    starts = fixed_blocks(input_ids, image_token_id, image_seq_length, "paligemma")
    regions = [ImageRegion(first_image + i, "full", grid_positions(s, side, side), (side, side))
               for i, s in enumerate(starts)]
    return RowImages(regions, torch.zeros(0, dtype=torch.long)).check(input_ids.numel())


def batch_images(config, inputs: dict) -> list[RowImages]:
    """One :class:`RowImages` per row of a PaliGemma batch; ``pixel_values`` (n_images, ...) sliced by the row's images."""
    ids = inputs["input_ids"]
    vc = config.vision_config
    seq = (int(vc.image_size) // int(vc.patch_size)) ** 2  # one token per SigLIP patch
    rows = [paligemma_row_images(ids[b], config.image_token_id, seq) for b in range(ids.shape[0])]
    counts = [len(r.regions) for r in rows]
    pixel_values = inputs.get("pixel_values")
    slices = split_counts(counts, pixel_values.shape[0] if pixel_values is not None else sum(counts), "paligemma")
    return [r.owning(sl) for r, sl in zip(rows, slices)]


@register_adapter
class PaliGemmaAdapter(LayoutAdapter):
    """transformers' ``PaliGemmaForConditionalGeneration`` (PaliGemma 1 and 2): image tokens first, one square grid each.

    The prefix (image, ``<bos>``, prompt, newline) has ``token_type_ids`` 0 and is bidirectional;
    generated tokens are the causal suffix: they get ``token_type_ids`` 1 in a replay (as
    ``generate`` gives them). The processor's ``labels`` are never passed on.
    """
    name = "paligemma"
    model_types = ("paligemma",)
    token_type_fill = {"token_type_ids": 1}

    @classmethod
    def supports(cls, config) -> bool:
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        return getattr(config, "model_type", None) in cls.model_types and vision == "siglip_vision_model"

    def build_prompt(self, processor, question: str, suffix: str | None = None, n_images: int = 1) -> tuple[str, str]:
        """PaliGemma has no chat template: the prefix form, ``<image>`` per picture then the question
        (the processor adds ``<bos>`` after the images and the closing newline)."""
        text = question if suffix is None else f"{question} {suffix}"
        return "<image>" * n_images + text, "plain"

    def layouts(self, inputs) -> list[RowImages]:
        return batch_images(self.model.config, inputs)
