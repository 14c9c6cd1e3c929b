"""Image regions: where one picture's tokens sit in a sequence and the grid they form.

Every VLM family lays image tokens out its own way (one fixed grid for LLaVA-1.5; a base
grid plus a high-resolution grid for LLaVA-NeXT; one merged grid per image for Qwen2-VL;
tiles plus a global view for Idefics3 ...). Adapters describe a row of ``input_ids`` as a
list of :class:`ImageRegion`; everything downstream (relevancy maps, captured maps, the
proxy, spans, the viewer) keeps maps *flat* over the concatenated region positions and
uses the regions to cut them back into grids::

    >>> import torch
    >>> r0 = ImageRegion(image=0, kind="full", positions=torch.arange(5, 9), grid=(2, 2))
    >>> r1 = ImageRegion(image=1, kind="full", positions=torch.arange(12, 18), grid=(2, 3))
    >>> flat_positions([r0, r1]).tolist()
    [5, 6, 7, 8, 12, 13, 14, 15, 16, 17]
    >>> [tuple(g.shape) for g in split_flat(torch.zeros(3, 10), [r0, r1])]
    [(3, 2, 2), (3, 2, 3)]

Tokens that belong to an image but are not spatial (a CLS token, row-end newlines, break
and separator tokens) are in no region.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastrm_common.errors import InputError

__all__ = ["REGION_KINDS", "ImageRegion", "check_regions", "flat_positions", "split_flat"]

#: What a region is a view of. ``full``: the whole image as one grid; ``base``: a low-resolution
#: overview next to ``hires`` (the high-resolution grid); ``tile``: one crop of a tiled image;
#: ``global``: the downscaled whole image that accompanies tiles; ``crop``: a pan-and-scan crop.
REGION_KINDS = ("full", "base", "hires", "tile", "global", "crop")


@dataclass(frozen=True)
class ImageRegion:
    """One grid of image tokens in one sequence.

    ``image`` is the index of the picture in the prompt (0-based, in prompt order), ``kind``
    one of :data:`REGION_KINDS`, ``positions`` (rows * cols,) the sequence indices of the
    grid's tokens in row-major order (padding included in the indexing), ``grid`` (rows, cols).
    """

    image: int
    kind: str
    positions: torch.Tensor
    grid: tuple[int, int]

    def __post_init__(self) -> None:
        if self.kind not in REGION_KINDS:
            raise InputError(f"unknown region kind {self.kind!r}; expected one of: {', '.join(REGION_KINDS)}")
        rows, cols = self.grid
        if rows < 1 or cols < 1 or self.positions.dim() != 1 or self.positions.numel() != rows * cols:
            raise InputError(
                f"region of image {self.image} ({self.kind}): grid {rows}x{cols} does not match "
                f"{self.positions.numel()} positions"
            )

    @property
    def size(self) -> int:
        """Number of tokens in the grid (rows * cols)."""
        return self.grid[0] * self.grid[1]


def flat_positions(regions: Sequence[ImageRegion]) -> torch.Tensor:
    """Sequence positions of all regions, concatenated in region order: (N,) long."""
    if not regions:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([r.positions.to(torch.long) for r in regions])


def split_flat(values: torch.Tensor, regions: Sequence[ImageRegion]) -> list[torch.Tensor]:
    """Cut ``values`` (..., N) flat over :func:`flat_positions` into one (..., rows, cols) per region."""
    total = sum(r.size for r in regions)
    if values.shape[-1] != total:
        raise InputError(f"a flat map of {values.shape[-1]} values does not cover regions of {total} tokens")
    out, start = [], 0
    for r in regions:
        out.append(values[..., start : start + r.size].reshape(*values.shape[:-1], *r.grid))
        start += r.size
    return out


def check_regions(regions: Sequence[ImageRegion], seq_len: int) -> None:
    """Raise :class:`InputError` unless every position is inside ``[0, seq_len)`` and no two regions share one."""
    pos = flat_positions(regions)
    if not pos.numel():
        return
    # strictly increasing positions (every adapter's usual layout) are distinct, their ends their extremes:
    # one comparison instead of a sort
    increasing = pos.numel() == 1 or bool((pos[1:] > pos[:-1]).all())
    low, high = (int(pos[0]), int(pos[-1])) if increasing else (int(pos.min()), int(pos.max()))
    if low < 0 or high >= seq_len:
        raise InputError(f"region positions fall outside a sequence of length {seq_len}")
    if not increasing and pos.unique().numel() != pos.numel():
        raise InputError("two image regions share a sequence position")
