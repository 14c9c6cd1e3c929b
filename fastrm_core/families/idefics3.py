"""Idefics3 / SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``): tagged tiles plus a global view.

A large image is split into R x C tiles plus a downscaled global view; each is one block of
``image_seq_len`` ``<image>`` tokens (a k x k grid after the pixel shuffle, row-major)::

    <fake_token_around_image><row_1_col_1><image>*k*k <fake_token_around_image><row_1_col_2><image>*k*k ... \\n
    ...
    \\n<fake_token_around_image><global-img><image>*k*k<fake_token_around_image>

A small image is the global block alone. The tiles are stitched by their tags into one
(R*k) x (C*k) ``hires`` region, followed by the ``global`` region (k x k); an unsplit image is one
``full`` region. The fake-token, tag and ``<global-img>`` tokens are separators. ``pixel_values``
(B, max_blocks, C, H, W) are per row, so no slicing is needed. The text model sits at
``model.text_model``.
"""

from __future__ import annotations

import math
import re

import torch

from fastrm_common.errors import InputError
from fastrm_core.adapters import register_adapter
from fastrm_core.families._base import LayoutAdapter
from fastrm_core.families._layout import RowImages, grid_positions, runs
from fastrm_core.regions import ImageRegion

__all__ = ["Idefics3Adapter", "batch_images", "idefics3_row_images", "tag_ids"]

_TAG = re.compile(r"<row_(\d+)_col_(\d+)>")


def tag_ids(tokenizer) -> dict[int, tuple[int, int]]:
    """The ``<row_r_col_c>`` tag ids of a tokenizer, mapped to their 0-based (row, col)."""
    out = {}
    for token, i in tokenizer.get_vocab().items():
        m = _TAG.fullmatch(token)
        if m:
            out[i] = (int(m.group(1)) - 1, int(m.group(2)) - 1)
    return out


def idefics3_row_images(input_ids: torch.Tensor, image_token_id: int, image_seq_len: int,
                        tags: dict[int, tuple[int, int]] | None = None) -> RowImages:
    """Regions of one row (S,): per image a stitched ``hires`` grid of its tiles and a ``global`` grid, or one ``full``.

    Read from the structure alone (the model's config names only the image token): every block is
    a fake token, a tag and ``image_seq_len`` image tokens; the row's last block is a global view,
    so its tag is the global tag, and an image is the tiles before a global block. Tiles of one row
    of the tiling follow each other directly (the next fake token right after the image tokens);
    a row ends with a newline. ``tags`` (``{tag id: (row, col)}``, :func:`tag_ids`) are checked
    when given.
    """
    side = math.isqrt(int(image_seq_len))
    if side * side != image_seq_len:
        raise InputError(f"idefics3: image_seq_len {image_seq_len} is not a square")
    ids = input_ids.tolist()
    blocks = runs(input_ids == image_token_id)
    if not blocks:
        return RowImages([], torch.zeros(0, dtype=torch.long))
    for start, length in blocks:
        if length != image_seq_len or start < 2:
            raise InputError(f"idefics3: an image block at position {start} is not a fake token, a tag and "
                             f"{image_seq_len} image tokens")
    fake = ids[blocks[0][0] - 2]
    global_tag = ids[blocks[-1][0] - 1]
    regions, seps, tiles, image = [], [], [], 0
    for start, _ in blocks:
        if ids[start - 2] != fake:
            raise InputError(f"idefics3: the image block at position {start} is not preceded by the fake token and a tag")
        seps += [start - 2, start - 1]
        end = start + image_seq_len
        if ids[start - 1] != global_tag:
            tiles.append(start)
            continue
        if end >= len(ids) or ids[end] != fake:
            raise InputError(f"idefics3: the global view at position {start} is not closed by the fake token")
        seps.append(end)
        if not tiles:
            regions.append(ImageRegion(image, "full", grid_positions(start, side, side), (side, side)))
        else:
            regions += _tiled(ids, tiles, start, fake, side, image, tags)
        tiles, image = [], image + 1
    if tiles:
        raise InputError("idefics3: tiles without a global view at the end of the row")
    return RowImages(regions, torch.tensor(seps, dtype=torch.long)).check(len(ids))


def _tiled(ids: list, tiles: list[int], global_start: int, fake: int, side: int, image: int,
           tags: dict | None) -> list[ImageRegion]:
    seq = side * side
    # a tile whose image tokens are not directly followed by the next tile's fake token ends a row
    row_end = [ids[s + seq] != fake for s in tiles]
    cols = row_end.index(True) + 1
    rows = len(tiles) // cols
    if rows * cols != len(tiles) or any(row_end[k] != ((k + 1) % cols == 0) for k in range(len(tiles))):
        raise InputError(f"idefics3: image {image}'s {len(tiles)} tiles do not form rows of equal length")
    big = torch.empty(rows * side, cols * side, dtype=torch.long)  # tile (r, c)'s row i is row r*side + i
    for k, s in enumerate(tiles):
        r, c = divmod(k, cols)
        if tags is not None and tags.get(ids[s - 1]) != (r, c):
            raise InputError(f"idefics3: tile {k} of image {image} is tagged {tags.get(ids[s - 1])}, expected {(r, c)}")
        big[r * side:(r + 1) * side, c * side:(c + 1) * side] = grid_positions(s, side, side).view(side, side)
    return [ImageRegion(image, "hires", big.reshape(-1), (rows * side, cols * side)),
            ImageRegion(image, "global", grid_positions(global_start, side, side), (side, side))]


def batch_images(config, inputs: dict, tags: dict[int, tuple[int, int]] | None = None) -> list[RowImages]:
    """One :class:`RowImages` per row of an Idefics3/SmolVLM batch (``pixel_values`` are per row: no slice)."""
    vc = config.vision_config
    seq = (int(vc.image_size) // int(vc.patch_size)) ** 2 // int(config.scale_factor) ** 2
    return [idefics3_row_images(row, config.image_token_id, seq, tags) for row in inputs["input_ids"]]


@register_adapter
class Idefics3Adapter(LayoutAdapter):
    """transformers' ``Idefics3ForConditionalGeneration`` and ``SmolVLMForConditionalGeneration``:
    tagged tiles stitched into one high-resolution grid, plus the global view."""
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    chat_end_tokens = ("<end_of_utterance>",)
    # pixel_values (B, max_blocks, C, H, W) and pixel_attention_mask are per row, not per image
    per_image_inputs = frozenset()

    @classmethod
    def supports(cls, config) -> bool:
        vision = getattr(getattr(config, "vision_config", None), "model_type", None)
        model_type = getattr(config, "model_type", None)
        return model_type in cls.model_types and vision == f"{model_type}_vision"

    @property
    def language_model(self):
        return self._inner.text_model

    def layouts(self, inputs) -> list[RowImages]:
        return batch_images(self.model.config, inputs)
