"""Map encoding: error bound, 4-bit packing, malformed input, and the byte-budget rule."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fastrm_common.errors import DataError, RelevancyError
from guardrail.telemetry.mapcodec import (
    MapBudget,
    MapPlan,
    decode_map,
    encode_map,
    encoded_nbytes,
    map_attributes,
    map_from_attributes,
)


@pytest.mark.parametrize("shape", [(24, 24), (1, 1), (3, 5), (7, 1), (16, 9)])
@pytest.mark.parametrize("bits, levels", [(8, 255), (4, 15)])
def test_round_trip_error_is_at_most_half_a_step(shape, bits, levels):
    rng = np.random.default_rng(0)
    for scale in (1.0, 1e-3, 50.0):
        m = (rng.random(shape) * scale + 0.25).astype(np.float32)
        enc = encode_map(m, bits=bits)
        json.dumps(enc)  # JSON-serialisable as is
        lo, hi = enc["scale"]
        assert (lo, hi) == (float(m.min()), float(m.max()))
        assert enc["shape"] == list(shape) and enc["dtype"] == f"u{bits}"
        out = decode_map(enc)
        assert out.shape == shape and out.dtype == np.float64
        assert np.abs(out - m.astype(np.float64)).max() <= (hi - lo) / levels / 2 + 1e-12


def test_extremes_are_exact_and_dtype_option():
    m = np.array([[0.0, 0.5], [1.0, 0.25]])
    out = decode_map(encode_map(m), dtype=np.float32)
    assert out.dtype == np.float32
    assert out[0, 0] == 0.0 and out[1, 0] == 1.0


def test_constant_map_decodes_exactly():
    m = np.full((4, 6), 0.37)
    enc = encode_map(m, bits=4)
    assert enc["scale"] == [0.37, 0.37]
    np.testing.assert_array_equal(decode_map(enc), m)


def test_sizes():
    m = np.random.default_rng(1).random((24, 24))
    assert len(encode_map(m)["data"]) == 768  # 576 bytes -> base64
    assert len(encode_map(m, bits=4)["data"]) == 384  # 288 bytes
    assert len(encode_map(np.ones((3, 3)), bits=4)["data"]) == 8  # 5 bytes, odd count padded


def test_four_bit_packing_order_is_high_nibble_first():
    m = np.array([[0.0, 1.0, 1.0]])
    enc = encode_map(m, bits=4)
    import base64

    assert base64.b64decode(enc["data"]) == bytes([0x0F, 0xF0])


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros(5), r"expected a non-empty 2-D map \(rows, cols\), got shape \(5,\)"),
        (np.zeros((0, 3)), r"got shape \(0, 3\)"),
        (np.array([[0.1, np.nan], [np.inf, 0.2]]), r"map of shape \(2, 2\) has 2 NaN or infinite values"),
    ],
)
def test_bad_maps(bad, message):
    with pytest.raises(RelevancyError, match=message):
        encode_map(bad)


def test_bad_bits():
    with pytest.raises(ValueError, match="unsupported bits 2; expected one of: 8, 4"):
        encode_map(np.zeros((2, 2)), bits=2)


def test_malformed_encodings():
    good = encode_map(np.eye(3))
    with pytest.raises(DataError, match="lacks the key 'data'"):
        decode_map({k: v for k, v in good.items() if k != "data"})
    with pytest.raises(DataError, match="unknown map dtype 'u16'"):
        decode_map({**good, "dtype": "u16"})
    with pytest.raises(DataError, match="needs 9"):
        decode_map({**good, "shape": [3, 3], "data": encode_map(np.eye(2))["data"]})
    with pytest.raises(DataError, match="malformed encoded map"):
        decode_map({**good, "data": "not base64!"})
    with pytest.raises(DataError, match="bad map shape"):
        decode_map({**good, "shape": [0, 9]})


def test_attributes_round_trip():
    m = np.random.default_rng(2).random((5, 7))
    enc = encode_map(m)
    attrs = map_attributes(enc)
    assert attrs["fastrm.map.shape"] == (5, 7) and attrs["fastrm.map.dtype"] == "u8"
    np.testing.assert_array_equal(map_from_attributes(attrs), decode_map(enc))
    assert map_from_attributes({"fastrm.token.index": 3}) is None
    with pytest.raises(DataError, match="lacks 'fastrm.map.scale'"):
        map_from_attributes({k: v for k, v in attrs.items() if k != "fastrm.map.scale"})


# ---------------------------------------------------------------- budget


def _maps(n: int, shape=(24, 24)) -> list[np.ndarray]:
    return [np.random.default_rng(i).random(shape) for i in range(n)]


def test_budget_all_fit_at_8_bits():
    maps = _maps(5)
    plan = MapBudget(max_bytes=10_000).plan(maps)
    assert isinstance(plan, MapPlan)
    assert (sorted(plan.encoded), plan.dropped, plan.bits) == ([0, 1, 2, 3, 4], (), 8)
    assert plan.nbytes == sum(encoded_nbytes(encode_map(m)) for m in maps) <= 10_000


def test_budget_falls_back_to_4_bits_when_that_fits():
    maps = _maps(10)
    size8 = sum(encoded_nbytes(encode_map(m)) for m in maps)
    size4 = sum(encoded_nbytes(encode_map(m, bits=4)) for m in maps)
    plan = MapBudget(max_bytes=size4).plan(maps)
    assert size4 < size8
    assert (len(plan.encoded), plan.dropped, plan.bits, plan.nbytes) == (10, (), 4, size4)


def test_budget_drops_with_priority_first():
    maps = _maps(10)
    one = encoded_nbytes(encode_map(maps[0], bits=4))
    plan = MapBudget(max_bytes=3 * one + 10).plan(maps, priority=[8, 5])
    assert plan.bits == 4
    assert sorted(plan.encoded) == [0, 5, 8]
    assert plan.dropped == (1, 2, 3, 4, 6, 7, 9)
    assert plan.nbytes <= 3 * one + 10


def test_budget_never_coarsen_and_unlimited_and_zero():
    maps = _maps(4)
    one8 = encoded_nbytes(encode_map(maps[0]))
    plan = MapBudget(max_bytes=2 * one8 + 5, min_bits=8).plan(maps)
    assert (plan.bits, sorted(plan.encoded), plan.dropped) == (8, [0, 1], (2, 3))
    assert len(MapBudget(max_bytes=None).plan(_maps(200)).encoded) == 200
    assert MapBudget(max_bytes=0).plan(maps).dropped == (0, 1, 2, 3)
    assert MapBudget().plan([]) == MapPlan(bits=8)


def test_budget_decoded_maps_keep_their_shape():
    maps = _maps(6, shape=(3, 5))
    plan = MapBudget(max_bytes=150).plan(maps, priority=[2])
    assert 2 in plan.encoded
    for i, enc in plan.encoded.items():
        assert decode_map(enc).shape == (3, 5)
        assert np.abs(decode_map(enc) - maps[i]).max() <= (maps[i].max() - maps[i].min()) / 15 / 2 + 1e-12


def test_budget_validation():
    with pytest.raises(ValueError, match="max_bytes must be None or >= 0"):
        MapBudget(max_bytes=-1)
    with pytest.raises(ValueError, match="unsupported min_bits 2"):
        MapBudget(min_bits=2)
    with pytest.raises(ValueError, match=r"min_bits \(8\) must not exceed bits \(4\)"):
        MapBudget(bits=4, min_bits=8)
    with pytest.raises(IndexError, match="priority position 7 is out of range for 2 maps"):
        MapBudget(max_bytes=10).plan(_maps(2), priority=[7])
