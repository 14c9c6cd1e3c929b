"""Small pieces that several families' region logic shares (internal).

A family module turns one row's ``input_ids`` (plus what the processor said about the images:
sizes, crop counts) into :class:`RowImages`: the row's image regions in prompt order and the
image-structure tokens that are in no region (LLaVA-NeXT's row newlines, Mistral3's
``[IMG_BREAK]``/``[IMG_END]``, Idefics3's ``<fake_token_around_image>``/``<row_r_col_c>`` tags, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fastrm_common.errors import InputError
from fastrm_core.regions import ImageRegion, check_regions, flat_positions

__all__ = ["RowImages", "fixed_blocks", "grid_positions", "runs", "split_counts"]


@dataclass(frozen=True)
class RowImages:
    """The image layout of one row: ``regions`` in prompt order (image, then view order),
    ``separators`` (K,) the sequence positions of image-structure tokens that belong to no region,
    and ``images`` the row's slice of batch-flattened per-image inputs (``pixel_values``,
    ``image_sizes`` ... of shape (n_images, ...)), None where those inputs are per row (B, ...)."""

    regions: list[ImageRegion]
    separators: torch.Tensor
    images: slice | None = None

    @property
    def n_images(self) -> int:
        return len({r.image for r in self.regions})

    def check(self, seq_len: int) -> RowImages:
        """Raise :class:`InputError` unless regions and separators are inside the row and disjoint."""
        check_regions(self.regions, seq_len)
        pos = flat_positions(self.regions)
        if self.separators.numel() and bool(torch.isin(self.separators, pos).any()):
            raise InputError("an image separator token sits inside an image region")
        return self

    def owning(self, images: slice | None) -> RowImages:
        """The same layout, owning ``images`` of the batch-flattened inputs."""
        return RowImages(self.regions, self.separators, images)


def grid_positions(start: int, rows: int, cols: int, row_stride: int | None = None) -> torch.Tensor:
    """Row-major positions of a rows x cols grid starting at ``start``, rows ``row_stride`` apart: (rows * cols,)."""
    stride = cols if row_stride is None else row_stride
    r = torch.arange(rows)[:, None] * stride
    c = torch.arange(cols)[None, :]
    return (start + r + c).reshape(-1)


def runs(mask: torch.Tensor) -> list[tuple[int, int]]:
    """Maximal runs of True in a 1-D bool tensor, as (start, length) pairs in order."""
    m = mask.to(torch.int8)
    edges = torch.diff(torch.cat([m.new_zeros(1), m, m.new_zeros(1)]))
    starts = (edges == 1).nonzero(as_tuple=True)[0].tolist()
    ends = (edges == -1).nonzero(as_tuple=True)[0].tolist()
    return [(s, e - s) for s, e in zip(starts, ends)]


def fixed_blocks(input_ids: torch.Tensor, token_id: int, block: int, what: str) -> list[int]:
    """Start positions of the consecutive blocks of ``block`` ``token_id`` tokens in one row.

    Families whose every image is the same number of placeholder tokens (Gemma 3, PaliGemma) may
    place two images' blocks back to back: runs are cut into blocks, and a run that is not a
    whole number of blocks is an error.
    """
    starts = []
    for start, length in runs(input_ids == token_id):
        if length % block:
            raise InputError(
                f"{what}: a run of {length} image tokens (id {token_id}) at position {start} is not a whole "
                f"number of {block}-token images"
            )
        starts.extend(range(start, start + length, block))
    return starts


def split_counts(per_row: Sequence[int], total: int, what: str) -> list[slice]:
    """Slices of a batch-flattened image axis (``pixel_values`` (n_images, ...)) per row, from per-row image counts."""
    if sum(per_row) != total:
        raise InputError(f"{what}: the prompts hold {sum(per_row)} images but {total} were given")
    out, start = [], 0
    for n in per_row:
        out.append(slice(start, start + n))
        start += n
    return out
