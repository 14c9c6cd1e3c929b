"""LLaVA-NeXT (``LlavaNextForConditionalGeneration``): a base grid, then an unpadded high-resolution grid with one newline per row.

Every image is one run of ``<image>`` tokens, in this order (transformers' ``pack_image_features``)::

    base   side x side                         the whole image resized to one tile (CLS dropped)
    hires  rows x (cols + 1)                   the tiles stitched, unpadded; the last column of
                                               each row is the learned ``image_newline``

``side = vision image_size // patch_size``. The high-resolution grid comes from the image's
original size (``image_sizes``, (height, width)): the best of ``image_grid_pinpoints`` is cut into
tiles of ``image_size`` pixels (``side`` patches each), then the padding that kept the aspect ratio
is cut off again (:func:`hires_grid`). Newlines carry the image token id too, so they can only be
told apart by this arithmetic; they are separators, in no region.

``pixel_values`` (n_images, max_tiles, C, H, W) and ``image_sizes`` (n_images, 2) are flattened over
the batch: a row's images are the next ones whose token counts add up to the row's image tokens
(:func:`images_per_row`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastrm_common.errors import InputError
from fastrm_core.adapters import register_adapter
from fastrm_core.families._base import LayoutAdapter
from fastrm_core.families._layout import RowImages, grid_positions
from fastrm_core.regions import ImageRegion

__all__ = [
    "LlavaNextAdapter",
    "batch_grids",
    "batch_images",
    "hires_from_features",
    "hires_grid",
    "image_token_count",
    "images_per_row",
    "row_images",
]


def _size_pair(size) -> tuple[int, int]:
    if torch.is_tensor(size):
        size = size.tolist()
    height, width = (int(v) for v in size)
    return height, width


def hires_grid(image_size, pinpoints: Sequence[Sequence[int]], tile: int, side: int,
               max_patches: int | None = None) -> tuple[int, int]:
    """(rows, cols) of the unpadded high-resolution grid of an image of ``image_size`` (height, width).

    ``tile``: the vision tower's image size in pixels; ``side``: its patches per side. ``max_patches``
    (LLaVA-OneVision's ``anyres_max_N``): when the grid holds more than about N tiles' worth of
    patches it is shrunk by bilinear interpolation, which these sizes follow exactly.
    """
    from transformers.image_processing_utils import select_best_resolution

    height, width = _size_pair(image_size)
    best_h, best_w = select_best_resolution((height, width), [list(p) for p in pinpoints])
    cur_h, cur_w = (best_h // tile) * side, (best_w // tile) * side
    # unpad_image: the resize kept the aspect ratio and padded the short side; cut the padding off
    if width / height > cur_w / cur_h:
        new_h = int(round(height * (cur_w / width), 7))
        cur_h -= 2 * ((cur_h - new_h) // 2)
    else:
        new_w = int(round(width * (cur_h / height), 7))
        cur_w -= 2 * ((cur_w - new_w) // 2)
    if max_patches is not None:
        ratio = math.sqrt(cur_h * cur_w / (max_patches * side**2))
        if ratio > 1.1:
            cur_h, cur_w = int(cur_h // ratio), int(cur_w // ratio)
    return cur_h, cur_w


def image_token_count(hires: tuple[int, int] | None, side: int) -> int:
    """Image tokens of one image: the base grid, plus the high-resolution rows each ended by a newline,
    or (``hires`` None: OneVision's images of multi-image prompts) one newline."""
    if hires is None:
        return side * side + 1
    rows, cols = hires
    return side * side + rows * (cols + 1)


def row_images(input_ids: torch.Tensor, image_token_id: int, hires: Sequence[tuple[int, int] | None], side: int,
               *, first_image: int = 0) -> RowImages:
    """The regions of one row (S,) whose images have the given high-resolution grids, in prompt order.

    ``hires[i]`` is image i's (rows, cols) from :func:`hires_grid`, or None for an image given as the
    base grid alone (then its region is ``full``). Raises :class:`InputError` when the row's image
    tokens are not exactly these images, each one contiguous run.
    """
    positions = (input_ids == image_token_id).nonzero(as_tuple=True)[0]
    counts = [image_token_count(h, side) for h in hires]
    if sum(counts) != positions.numel():
        raise InputError(
            f"the row holds {positions.numel()} image tokens but its {len(counts)} image(s) need {sum(counts)} "
            f"({'+'.join(map(str, counts))})"
        )
    regions, separators, used = [], [], 0
    for i, (grid, n) in enumerate(zip(hires, counts)):
        start = int(positions[used])
        if int(positions[used + n - 1]) - start != n - 1:
            raise InputError(f"image {first_image + i}'s {n} image tokens are not one contiguous run")
        used += n
        image = first_image + i
        if grid is None:
            regions.append(ImageRegion(image, "full", grid_positions(start, side, side), (side, side)))
            separators.append(torch.tensor([start + side * side]))
            continue
        rows, cols = grid
        regions.append(ImageRegion(image, "base", grid_positions(start, side, side), (side, side)))
        hires_start = start + side * side
        regions.append(ImageRegion(image, "hires", grid_positions(hires_start, rows, cols, cols + 1), (rows, cols)))
        separators.append(hires_start + cols + torch.arange(rows) * (cols + 1))
    seps = torch.cat(separators) if separators else torch.zeros(0, dtype=torch.long)
    return RowImages(regions, seps.to(torch.long)).check(input_ids.numel())


def images_per_row(image_tokens_per_row: Sequence[int], tokens_per_image: Sequence[int]) -> list[int]:
    """How many of the batch-flattened images each row holds, from the rows' image-token counts.

    Images are taken in order; a row owns the next images whose token counts add up to its own.
    """
    out, i = [], 0
    for want in image_tokens_per_row:
        got, n = 0, 0
        while got < want and i < len(tokens_per_image):
            got += tokens_per_image[i]
            i += 1
            n += 1
        if got != want:
            raise InputError(
                f"a row holds {want} image tokens, which no run of the given images' token counts "
                f"({', '.join(map(str, tokens_per_image))}) adds up to"
            )
        out.append(n)
    if i != len(tokens_per_image):
        raise InputError(f"{len(tokens_per_image) - i} image(s) given beyond the prompts' image tokens")
    return out


def _geometry(config) -> tuple[int, int, list]:
    vc = config.vision_config
    return int(vc.image_size), int(vc.image_size) // int(vc.patch_size), [list(p) for p in config.image_grid_pinpoints]


def hires_from_features(features: torch.Tensor, newline: torch.Tensor, side: int) -> tuple[int, int] | None:
    """An image's high-resolution grid read from its packed features (n, D): the rows end where the
    learned ``image_newline`` (D,) was appended, an exact copy. None for a base grid alone.

    ``generate`` encodes the images before the prefill and drops ``image_sizes``; the packed
    features it passes on (``mm_encoder_outputs``) still say where every newline is.
    """
    n = features.shape[0]
    newlines = (features == newline.to(features)).all(-1).nonzero(as_tuple=True)[0]
    if n == side * side + 1 and newlines.tolist() == [side * side]:
        return None
    rows = newlines.numel()
    cols = (n - side * side) // max(rows, 1) - 1
    expected = side * side + cols + torch.arange(rows, device=newlines.device) * (cols + 1)
    if rows == 0 or cols < 1 or image_token_count((rows, cols), side) != n or not torch.equal(newlines, expected):
        raise InputError(f"an image's {n} packed features do not form a base grid and newline-ended rows")
    return rows, cols


def batch_grids(config, inputs: dict, newline: torch.Tensor | None = None, max_patches: int | None = None) -> list:
    """Every image's high-resolution grid (or None: base grid alone), over the batch in prompt order.

    From ``image_sizes`` when the inputs have them (the processor's output); else from the packed
    features of ``mm_encoder_outputs`` and the model's ``newline`` (what the prefill of ``generate`` sees).
    """
    tile, side, pins = _geometry(config)
    sizes = inputs.get("image_sizes")
    if sizes is not None:
        return [hires_grid(s, pins, tile, side, max_patches) for s in sizes]
    encoded = (inputs.get("mm_encoder_outputs") or {}).get("image")
    if encoded is None or newline is None:
        raise InputError(f"{config.model_type}: the inputs carry neither image_sizes nor encoded images "
                         "(pass the processor's output)")
    return [hires_from_features(f, newline, side) for f in encoded.pooler_output]


def batch_images(config, inputs: dict, newline: torch.Tensor | None = None) -> list[RowImages]:
    """One :class:`RowImages` per row of a LLaVA-NeXT batch (``input_ids`` (B, S), ``image_sizes`` (n_images, 2)
    or, at ``generate``'s prefill, ``mm_encoder_outputs`` with the model's ``newline``)."""
    side = _geometry(config)[1]
    ids = inputs["input_ids"]
    grids = batch_grids(config, inputs, newline)
    per_row = images_per_row((ids == config.image_token_id).sum(-1).tolist(), [image_token_count(g, side) for g in grids])
    out, start = [], 0
    for b, n in enumerate(per_row):
        row = row_images(ids[b], config.image_token_id, grids[start:start + n], side)
        out.append(row.owning(slice(start, start + n)))
        start += n
    return out


def tower_fits(config) -> bool:
    """CLIP with its CLS token dropped ("default") or SigLIP with every patch kept ("full"): one tile = side x side tokens."""
    vision = getattr(getattr(config, "vision_config", None), "model_type", None)
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    return (vision, strategy) in {("clip_vision_model", "default"), ("siglip_vision_model", "full")}


@register_adapter
class LlavaNextAdapter(LayoutAdapter):
    """transformers' ``LlavaNextForConditionalGeneration`` (LLaVA-1.6 / LLaVA-NeXT): base + unpadded high-resolution grid."""
    name = "llava_next"
    model_types = ("llava_next",)
    chat_end_tokens = ("<|eot_id|>", "<|im_end|>")

    @classmethod
    def supports(cls, config) -> bool:
        return getattr(config, "model_type", None) in cls.model_types and tower_fits(config)

    def layouts(self, inputs) -> list[RowImages]:
        return batch_images(self.model.config, inputs, self._inner.image_newline)
