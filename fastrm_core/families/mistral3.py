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
from fastrm_core.adapters import register_adapter
from fastrm_core.families._base import LayoutAdapter
from fastrm_core.families._layout import RowImages, runs, split_counts
from fastrm_core.regions import ImageRegion

__all__ = ["Mistral3Adapter", "PixtralLlavaAdapter", "batch_images", "mistral3_row_images"]


def mistral3_row_images(input_ids: torch.Tensor, image_token_id: int, break_token_id: int | None = None,
                        end_token_id: int | None = None, *, first_image: int = 0) -> RowImages:
    """Regions of one row (S,): one ``full`` grid per image, read from the ``[IMG]``/``[IMG_BREAK]``/``[IMG_END]`` layout.

    The break and end ids need not be known (the model's config does not name them): every row of
    ``[IMG]`` is followed by one token, the last image's last row by ``[IMG_END]``, so that token's id
    is the end id and a row followed by any other token, itself followed at once by the next row,
    ends at a break. Given ids are checked.
    """
    ids = input_ids.tolist()
    img_runs = runs(input_ids == image_token_id)
    if not img_runs:
        return RowImages([], torch.zeros(0, dtype=torch.long))
    last_start, last_len = img_runs[-1]
    if last_start + last_len >= len(ids):
        raise InputError("mistral3: the row ends inside an image (no [IMG_END] after the last [IMG] row)")
    end = ids[last_start + last_len]
    if end_token_id is not None and end != end_token_id:
        raise InputError(f"mistral3: the last image row is followed by id {end}, not [IMG_END] ({end_token_id})")
    regions, seps, rows, image = [], [], [], first_image
    for k, (start, width) in enumerate(img_runs):
        after = start + width
        trailing = ids[after] if after < len(ids) else None
        if rows and width != rows[0].numel():
            raise InputError(f"mistral3: image {image} has rows of {rows[0].numel()} and {width} [IMG] tokens")
        rows.append(torch.arange(start, after))
        seps.append(after)
        if trailing == end:
            regions.append(ImageRegion(image, "full", torch.cat(rows), (len(rows), width)))
            rows, image = [], image + 1
            continue
        nxt = img_runs[k + 1][0] if k + 1 < len(img_runs) else None
        if nxt != after + 1 or (break_token_id is not None and trailing != break_token_id):
            raise InputError(f"mistral3: the [IMG] row at position {start} is followed by neither [IMG_BREAK] "
                             "and the next row nor [IMG_END]")
    return RowImages(regions, torch.tensor(seps, dtype=torch.long)).check(len(ids))


def batch_images(config, inputs: dict, break_token_id: int | None = None,
                 end_token_id: int | None = None) -> list[RowImages]:
    """One :class:`RowImages` per row of a Mistral3 batch; ``pixel_values``/``image_sizes`` (n_images, ...) sliced per row."""

    ids = inputs["input_ids"]
    rows = [mistral3_row_images(ids[b], config.image_token_id, break_token_id, end_token_id) for b in range(ids.shape[0])]
    sizes = inputs.get("image_sizes")
    total = sizes.shape[0] if sizes is not None else sum(len(r.regions) for r in rows)
    slices = split_counts([len(r.regions) for r in rows], total, "mistral3")
    return [r.owning(sl) for r, sl in zip(rows, slices)]


@register_adapter
class Mistral3Adapter(LayoutAdapter):
    """transformers' ``Mistral3ForConditionalGeneration`` (Mistral Small 3.1/3.2): Pixtral grids read from ``input_ids``."""

    name = "mistral3"
    model_types = ("mistral3",)

    @classmethod
    def supports(cls, config) -> bool:
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        return getattr(config, "model_type", None) in cls.model_types and vision == "pixtral"

    def layouts(self, inputs) -> list[RowImages]:
        return batch_images(self.model.config, inputs)


@register_adapter
class PixtralLlavaAdapter(Mistral3Adapter):
    """transformers' ``LlavaForConditionalGeneration`` with a Pixtral vision tower (Pixtral-12B): the same layout
    as Mistral3 (no patch merger), which LLaVA-1.5's fixed-grid adapter refuses."""
    name = "pixtral"
    model_types = ("llava",)
