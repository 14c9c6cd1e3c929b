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
from fastrm_core.families._layout import RowImages, grid_positions, runs
from fastrm_core.regions import ImageRegion

__all__ = ["batch_images", "Idefics3Tokens", "idefics3_row_images"]

_TAG = re.compile(r"<row_(\d+)_col_(\d+)>")


class Idefics3Tokens:
    """The structural token ids of an Idefics3/SmolVLM tokenizer: image, fake-token, global tag and the row/col tags."""

    def __init__(self, image: int, fake: int, global_img: int, tags: dict[int, tuple[int, int]]):
        self.image, self.fake, self.global_img, self.tags = image, fake, global_img, tags

    @classmethod
    def from_tokenizer(cls, tokenizer, image_token_id: int | None = None) -> Idefics3Tokens:
        unk = tokenizer.unk_token_id
        ids = {name: tokenizer.convert_tokens_to_ids(name)
               for name in ("<image>", "<fake_token_around_image>", "<global-img>")}
        missing = [name for name, i in ids.items() if i is None or i == unk]
        if missing:
            raise InputError(f"the tokenizer lacks Idefics3's structural tokens: {', '.join(missing)}")
        tags = {}
        for token, i in tokenizer.get_vocab().items():
            m = _TAG.fullmatch(token)
            if m:
                tags[i] = (int(m.group(1)) - 1, int(m.group(2)) - 1)
        return cls(image_token_id if image_token_id is not None else ids["<image>"], ids["<fake_token_around_image>"],
                   ids["<global-img>"], tags)


def idefics3_row_images(input_ids: torch.Tensor, tokens: Idefics3Tokens, image_seq_len: int) -> RowImages:
    """Regions of one row (S,), read from its tags: per image a stitched ``hires`` grid and a ``global`` one, or ``full``."""
    side = math.isqrt(int(image_seq_len))
    if side * side != image_seq_len:
        raise InputError(f"idefics3: image_seq_len {image_seq_len} is not a square")
    ids = input_ids.tolist()
    regions, seps, tiles, image = [], [], {}, 0
    for start, length in runs(input_ids == tokens.image):
        if length != image_seq_len or start < 2 or ids[start - 2] != tokens.fake:
            raise InputError(f"idefics3: an image block at position {start} is not <fake_token_around_image>, "
                             f"a tag and {image_seq_len} <image> tokens")
        tag = ids[start - 1]
        seps += [start - 2, start - 1]
        if tag in tokens.tags:
            r, c = tokens.tags[tag]
            if (r, c) in tiles:
                raise InputError(f"idefics3: tile <row_{r + 1}_col_{c + 1}> appears twice in image {image}")
            tiles[(r, c)] = start
            continue
        if tag != tokens.global_img:
            raise InputError(f"idefics3: the image block at position {start} has an unknown tag (id {tag})")
        end = start + image_seq_len
        if end >= len(ids) or ids[end] != tokens.fake:
            raise InputError(f"idefics3: the global view at position {start} is not closed by <fake_token_around_image>")
        seps.append(end)
        if tiles:
            rows = 1 + max(r for r, _ in tiles)
            cols = 1 + max(c for _, c in tiles)
            if len(tiles) != rows * cols:
                raise InputError(f"idefics3: image {image} has {len(tiles)} tiles, not a full {rows}x{cols} grid")
            # stitched: tile (r, c)'s row i is row r*side + i of the big grid
            big = torch.empty(rows * side, cols * side, dtype=torch.long)
            for (r, c), s in tiles.items():
                big[r * side:(r + 1) * side, c * side:(c + 1) * side] = grid_positions(s, side, side).view(side, side)
            regions.append(ImageRegion(image, "hires", big.reshape(-1), (rows * side, cols * side)))
            regions.append(ImageRegion(image, "global", grid_positions(start, side, side), (side, side)))
        else:
            regions.append(ImageRegion(image, "full", grid_positions(start, side, side), (side, side)))
        tiles, image = {}, image + 1
    if tiles:
        raise InputError("idefics3: tiles without a global view at the end of the row")
    return RowImages(regions, torch.tensor(seps, dtype=torch.long)).check(len(ids))


def batch_images(config, inputs: dict, tokens: Idefics3Tokens) -> list[RowImages]:
    """One :class:`RowImages` per row of an Idefics3/SmolVLM batch (``pixel_values`` are per row: no slice)."""
    vc = config.vision_config
    seq = (int(vc.image_size) // int(vc.patch_size)) ** 2 // int(config.scale_factor) ** 2
    return [idefics3_row_images(row, tokens, seq) for row in inputs["input_ids"]]
