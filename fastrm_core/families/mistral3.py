"""Mistral3 / Pixtral (``Mistral3ForConditionalGeneration``): ``[IMG]`` rows ended by ``[IMG_BREAK]``, the last by ``[IMG_END]``.

Each image is resized to a multiple of (patch_size * spatial_merge_size) pixels; the patch merger
folds each 2x2 (``spatial_merge_size``) block of patches into one token (``unfold``: row-major).
The processor writes the grid as it is: ``[IMG]`` * cols then ``[IMG_BREAK]``, per row, the last
row's break replaced by ``[IMG_END]``; so rows and cols are read from ``input_ids`` alone, for any
number of images of any sizes. ``pixel_values`` (n_images, C, H_max, W_max) and ``image_sizes``
(n_images, 2) are flattened over the batch; a row owns as many as it has ``[IMG_END]`` tokens.
"""

from __future__ import annotations

import torch

from fastrm_common.errors import InputError
from fastrm_core.families._layout import RowImages, split_counts
from fastrm_core.regions import ImageRegion

__all__ = ["batch_images", "mistral3_row_images"]


def mistral3_row_images(input_ids: torch.Tensor, image_token_id: int, break_token_id: int, end_token_id: int, *,
                        first_image: int = 0) -> RowImages:
    """Regions of one row (S,): one ``full`` grid per image, read from the ``[IMG]``/``[IMG_BREAK]``/``[IMG_END]`` layout."""
    ids = input_ids.tolist()
    regions, seps = [], []
    i, image = 0, first_image
    while i < len(ids):
        if ids[i] not in (image_token_id, break_token_id, end_token_id):
            i += 1
            continue
        rows, cols, positions = 0, None, []
        while True:
            start = i
            while i < len(ids) and ids[i] == image_token_id:
                i += 1
            width = i - start
            if i == len(ids) or ids[i] not in (break_token_id, end_token_id) or width == 0:
                raise InputError(f"mistral3: image {image} has a row at position {start} not ended by "
                                 "[IMG_BREAK]/[IMG_END] after [IMG] tokens")
            if cols is not None and width != cols:
                raise InputError(f"mistral3: image {image} has rows of {cols} and {width} [IMG] tokens")
            cols, rows = width, rows + 1
            positions.append(torch.arange(start, i))
            seps.append(i)
            i += 1
            if ids[i - 1] == end_token_id:
                break
        regions.append(ImageRegion(image, "full", torch.cat(positions), (rows, cols)))
        image += 1
    return RowImages(regions, torch.tensor(seps, dtype=torch.long)).check(len(ids))


def batch_images(config, inputs: dict, break_token_id: int, end_token_id: int) -> list[RowImages]:
    """One :class:`RowImages` per row of a Mistral3 batch; ``pixel_values``/``image_sizes`` (n_images, ...) sliced per row."""

    ids = inputs["input_ids"]
    rows = [mistral3_row_images(ids[b], config.image_token_id, break_token_id, end_token_id) for b in range(ids.shape[0])]
    sizes = inputs.get("image_sizes")
    total = sizes.shape[0] if sizes is not None else sum(len(r.regions) for r in rows)
    slices = split_counts([len(r.regions) for r in rows], total, "mistral3")
    return [r.owning(sl) for r, sl in zip(rows, slices)]
