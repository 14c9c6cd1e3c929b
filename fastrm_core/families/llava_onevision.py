"""LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's layout, with ``anyres_max_N`` and multi-image prompts.

A prompt with ONE image is laid out as in :mod:`fastrm_core.families.llava_next` (base grid, then
the unpadded high-resolution grid, one newline per row), except that a high-resolution grid of more
than about N tiles' worth of patches is shrunk by bilinear interpolation (``vision_aspect_ratio``
= ``anyres_max_N``). In a prompt with SEVERAL images every image is its base grid alone followed by
one newline (the processor's ``batch_num_images`` says how many images each row holds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastrm_common.errors import InputError
from fastrm_core.families._layout import RowImages, split_counts
from fastrm_core.families.llava_next import hires_grid, image_token_count, images_per_row, row_images

__all__ = ["batch_images", "max_patches", "row_grids", "onevision_row_images"]


def max_patches(vision_aspect_ratio: str) -> int:
    """N of ``anyres_max_N``."""
    prefix = "anyres_max_"
    if not vision_aspect_ratio.startswith(prefix) or not vision_aspect_ratio[len(prefix):].isdigit():
        raise InputError(f"unsupported vision_aspect_ratio {vision_aspect_ratio!r}; expected 'anyres_max_N'")
    return int(vision_aspect_ratio[len(prefix):])


def row_grids(image_sizes: Sequence, pinpoints, tile: int, side: int, vision_aspect_ratio: str) -> list:
    """High-resolution grids of one row's images: one (rows, cols) for a single image, None for each of several."""
    if len(image_sizes) != 1:
        return [None] * len(image_sizes)
    return [hires_grid(image_sizes[0], pinpoints, tile, side, max_patches(vision_aspect_ratio))]


def onevision_row_images(input_ids: torch.Tensor, image_token_id: int, image_sizes: Sequence, *, pinpoints, tile: int,
                         side: int, vision_aspect_ratio: str = "anyres_max_9") -> RowImages:
    """Regions of one row (S,) holding ``len(image_sizes)`` images (sizes (height, width))."""
    grids = row_grids(image_sizes, pinpoints, tile, side, vision_aspect_ratio)
    return row_images(input_ids, image_token_id, grids, side)


def batch_images(config, inputs: dict) -> list[RowImages]:
    """One :class:`RowImages` per row of a LLaVA-OneVision batch (``image_sizes`` (n_images, 2), ``batch_num_images`` (B,))."""

    vc = config.vision_config
    tile, side = int(vc.image_size), int(vc.image_size) // int(vc.patch_size)
    pins = [list(p) for p in config.image_grid_pinpoints]
    ids, sizes = inputs["input_ids"], inputs.get("image_sizes")
    if sizes is None:
        raise InputError("llava_onevision: the inputs carry no image_sizes (the processor's output has them)")
    per_row = inputs.get("batch_num_images")
    if per_row is None:  # as the model does: every image on its own, with its high-resolution grid
        grids = [hires_grid(s, pins, tile, side, max_patches(config.vision_aspect_ratio)) for s in sizes]
        per_row = images_per_row((ids == config.image_token_id).sum(-1).tolist(),
                                 [image_token_count(g, side) for g in grids])
    slices = split_counts([int(n) for n in per_row], len(sizes), "llava_onevision")
    return [onevision_row_images(ids[b], config.image_token_id, sizes[sl], pinpoints=pins, tile=tile, side=side,
                                 vision_aspect_ratio=config.vision_aspect_ratio).owning(sl)
            for b, sl in enumerate(slices)]
