"""The single-image layout the first release exposed (``ImageLayout``), kept for the tests that check
capture and relevancy against it: where one sequence's image tokens are and the grid they form."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fastrm_common.errors import InputError


@dataclass(frozen=True)
class ImageLayout:
    positions: torch.Tensor  # (N_img,) indices into the sequence, the first ``offset`` not patches
    grid: tuple[int, int]
    offset: int = 0

    @property
    def patch_positions(self) -> torch.Tensor:
        return self.positions[self.offset:]


def image_layout(adapter, input_ids: torch.Tensor) -> ImageLayout:
    """The layout of ONE sequence (S,) holding exactly one image with one region."""
    if input_ids.dim() != 1:
        raise InputError(f"image_layout takes one sequence (S,), got shape {tuple(input_ids.shape)}")
    regions = adapter.regions(input_ids)
    if len(regions) != 1:
        raise InputError(f"expected exactly one image region in the sequence, found {len(regions)}")
    (region,) = regions
    positions = (input_ids == adapter.image_token_id).nonzero(as_tuple=True)[0]
    return ImageLayout(positions=positions, grid=region.grid, offset=positions.numel() - region.size)


def image_layouts(adapter, input_ids: torch.Tensor) -> list[ImageLayout]:
    return [image_layout(adapter, row) for row in input_ids]
