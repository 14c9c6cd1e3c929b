import pytest
import torch

from fastrm_common.errors import InputError
from fastrm_core.regions import ImageRegion, check_regions, flat_positions, split_flat


def _two():
    return [
        ImageRegion(image=0, kind="base", positions=torch.arange(2, 6), grid=(2, 2)),
        ImageRegion(image=0, kind="hires", positions=torch.tensor([7, 8, 9, 11, 12, 13]), grid=(2, 3)),
    ]


def test_split_flat_inverts_flat_positions_row_major():
    regions = _two()
    seq = torch.arange(20).float()
    flat = seq[flat_positions(regions)]  # (10,)
    base, hires = split_flat(flat, regions)
    assert base.tolist() == [[2, 3], [4, 5]]
    assert hires.tolist() == [[7, 8, 9], [11, 12, 13]]


def test_grid_must_match_positions_and_kind_must_be_known():
    with pytest.raises(InputError, match="2x3"):
        ImageRegion(image=0, kind="full", positions=torch.arange(5), grid=(2, 3))
    with pytest.raises(InputError, match="expected one of"):
        ImageRegion(image=0, kind="mosaic", positions=torch.arange(4), grid=(2, 2))


def test_check_regions_bounds_and_overlap():
    check_regions(_two(), seq_len=14)
    with pytest.raises(InputError, match="outside"):
        check_regions(_two(), seq_len=13)
    clash = _two() + [ImageRegion(image=1, kind="full", positions=torch.tensor([5]), grid=(1, 1))]
    with pytest.raises(InputError, match="share"):
        check_regions(clash, seq_len=20)


def test_split_flat_rejects_a_map_of_the_wrong_length():
    with pytest.raises(InputError, match="does not cover"):
        split_flat(torch.zeros(9), _two())
