import math

import numpy as np
import pytest

from calibration import token_entropy
from fastrm_common.errors import CalibrationError


@pytest.mark.parametrize("n", [2, 16, 576])
def test_uniform_map_has_entropy_log_n(n):
    assert token_entropy(np.full(n, 0.37)) == pytest.approx(math.log(n))
    assert token_entropy(np.full(n, 0.37), normalized=True) == pytest.approx(1.0)


def test_one_hot_map_has_zero_entropy():
    p = np.zeros(24)
    p[5] = 0.9
    assert token_entropy(p) == 0.0
    assert token_entropy(p, normalized=True) == 0.0


def test_scale_invariant_and_known_value():
    # two equal patches out of four: log 2 whatever the absolute level
    assert token_entropy([0.8, 0.8, 0.0, 0.0]) == pytest.approx(math.log(2))
    assert token_entropy([0.1, 0.1, 0.0, 0.0], normalized=True) == pytest.approx(0.5)


def test_batches_of_flat_maps_and_grids_agree():
    rng = np.random.default_rng(0)
    grids = rng.uniform(size=(5, 4, 6))  # (T, rows, cols)
    flat = grids.reshape(5, 24)  # (T, N)
    h_grid = token_entropy(grids)
    h_flat = token_entropy(flat)
    assert h_grid.shape == (5,)
    np.testing.assert_allclose(h_grid, h_flat)
    np.testing.assert_allclose(h_grid, [token_entropy(m) for m in flat])
    hn = token_entropy(grids, normalized=True)
    assert ((hn >= 0) & (hn <= 1)).all()
    np.testing.assert_allclose(hn, h_grid / math.log(24))


def test_single_grid_needs_map_ndim():
    grid = np.ones((3, 4))
    assert token_entropy(grid).shape == (3,)  # read as (T, N)
    assert token_entropy(grid, map_ndim=2) == pytest.approx(math.log(12))
    with pytest.raises(CalibrationError, match="map_ndim"):
        token_entropy(np.ones((2, 2, 3, 3)))
    assert token_entropy(np.ones((2, 2, 3, 3)), map_ndim=2).shape == (2, 2)
    with pytest.raises(CalibrationError, match="map_ndim"):
        token_entropy(np.ones(4), map_ndim=2)


def test_normalized_in_unit_interval_random():
    rng = np.random.default_rng(1)
    maps = rng.uniform(size=(200, 49)) ** 4
    maps[:10] = 0
    maps[:10, 3] = 1  # one-hot
    h = token_entropy(maps, normalized=True)
    assert h.min() >= 0 and h.max() <= 1
    assert (h[:10] == 0).all()


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    t = torch.full((3, 2, 2), 0.5, dtype=torch.float16)
    np.testing.assert_allclose(token_entropy(t), np.full(3, math.log(4)))


@pytest.mark.parametrize(
    ("probs", "message"),
    [
        ([0.1, float("nan")], "NaN"),
        ([0.1, -0.2], "negative"),
        ([0.1, float("inf")], "infinite"),
        ([0.0, 0.0], "sums to 0"),
        (np.zeros((2, 0)), "no patches"),
        (["a", "b"], "not numeric"),
    ],
)
def test_rejects_bad_maps(probs, message):
    with pytest.raises(CalibrationError, match=message):
        token_entropy(probs)


def test_normalized_needs_two_patches():
    assert token_entropy([0.4]) == 0.0
    with pytest.raises(CalibrationError, match="at least 2"):
        token_entropy([0.4], normalized=True)
