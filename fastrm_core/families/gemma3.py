"""Gemma 3 (``Gemma3ForConditionalGeneration``): each image is a fixed, pooled square grid between ``<start_of_image>`` and ``<end_of_image>``.

The vision tower's patches are average-pooled to ``mm_tokens_per_image`` tokens, a k x k grid
(k = sqrt(mm_tokens_per_image)) in row-major order (``AvgPool2d`` then ``flatten``). Image tokens
attend to each other bidirectionally within their block (``token_type_ids`` = 1 on them).

Pan-and-scan (``do_pan_and_scan``) writes the whole image and then ``num_crops`` crops of it, each
a full block; given the crop counts, the first block of such an image is its ``global`` view and
the next ones its ``crop`` s; without them every block counts as its own image.
``pixel_values`` (n_blocks, C, H, W) are flattened over the batch, one per block.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastrm_common.errors import InputError
from fastrm_core.adapters import register_adapter
from fastrm_core.families._base import LayoutAdapter
from fastrm_core.families._layout import RowImages, fixed_blocks, grid_positions, split_counts
from fastrm_core.regions import ImageRegion

__all__ = ["Gemma3Adapter", "batch_images", "gemma3_row_images", "pooled_side"]


def pooled_side(mm_tokens_per_image: int) -> int:
    side = math.isqrt(int(mm_tokens_per_image))
    if side * side != mm_tokens_per_image:
        raise InputError(f"mm_tokens_per_image {mm_tokens_per_image} is not a square")
    return side


def gemma3_row_images(input_ids: torch.Tensor, image_token_id: int, mm_tokens_per_image: int, *,
                      boi_token_id: int | None = None, eoi_token_id: int | None = None,
                      num_crops: Sequence[int] | None = None, first_image: int = 0) -> RowImages:
    """Regions of one row (S,): one k x k grid per image block; ``<start/end_of_image>`` are separators.

    ``num_crops[i]`` (pan-and-scan) is the number of crops that follow image i's global block.
    """
    side = pooled_side(mm_tokens_per_image)
    starts = fixed_blocks(input_ids, image_token_id, mm_tokens_per_image, "gemma3")
    if num_crops is None:
        owners = [(first_image + i, "full") for i in range(len(starts))]
    else:
        owners = []
        for i, n in enumerate(num_crops):
            owners += [(first_image + i, "global" if n else "full")] + [(first_image + i, "crop")] * int(n)
        if len(owners) != len(starts):
            raise InputError(f"gemma3: the row holds {len(starts)} image blocks but num_crops describes {len(owners)}")
    regions = [ImageRegion(img, kind, grid_positions(s, side, side), (side, side)) for s, (img, kind) in zip(starts, owners)]
    marks = torch.zeros(0, dtype=torch.long)
    if boi_token_id is not None and eoi_token_id is not None:
        marks = torch.isin(input_ids, torch.tensor([boi_token_id, eoi_token_id], device=input_ids.device))
        marks = marks.nonzero(as_tuple=True)[0].cpu()
        if marks.numel() != 2 * len(starts):
            raise InputError(f"gemma3: {len(starts)} image blocks but {marks.numel()} start/end-of-image tokens")
    return RowImages(regions, marks).check(input_ids.numel())


def batch_images(config, inputs: dict, num_crops: Sequence[int] | None = None) -> list[RowImages]:
    """One :class:`RowImages` per row of a Gemma 3 batch; ``pixel_values`` (n_blocks, ...) sliced by the row's blocks."""

    ids = inputs["input_ids"]
    crops = iter(int(n) for n in num_crops) if num_crops is not None else None
    rows, start = [], 0
    for b in range(ids.shape[0]):
        n_blocks = len(fixed_blocks(ids[b], config.image_token_id, config.mm_tokens_per_image, "gemma3"))
        row_crops = None
        if crops is not None:  # the row's images: the next ones whose global block + crops cover its blocks
            row_crops, taken = [], 0
            while taken < n_blocks:
                row_crops.append(next(crops, 0))
                taken += 1 + row_crops[-1]
        row = gemma3_row_images(ids[b], config.image_token_id, config.mm_tokens_per_image,
                                boi_token_id=config.boi_token_id, eoi_token_id=config.eoi_token_id,
                                num_crops=row_crops)
        rows.append(row.owning(slice(start, start + n_blocks)))
        start += n_blocks
    pixel_values = inputs.get("pixel_values")
    if pixel_values is not None:
        split_counts([r.images.stop - r.images.start for r in rows], pixel_values.shape[0], "gemma3")
    return rows


@register_adapter
class Gemma3Adapter(LayoutAdapter):
    """transformers' ``Gemma3ForConditionalGeneration`` (Gemma 3 4B/12B/27B): one pooled square grid per image block.

    ``token_type_ids`` (1 on image tokens: their bidirectional attention) are unpadded with the row
    and extended with 0 for generated tokens. Pan-and-scan crops are separate blocks; without the
    processor's ``num_crops`` (which it does not return) each block counts as one image.
    """
    name = "gemma3"
    model_types = ("gemma3",)
    chat_end_tokens = ("<end_of_turn>",)
    token_type_fill = {"token_type_ids": 0}

    @classmethod
    def supports(cls, config) -> bool:
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        return getattr(config, "model_type", None) in cls.model_types and vision == "siglip_vision_model"

    def layouts(self, inputs) -> list[RowImages]:
        return batch_images(self.model.config, inputs)
