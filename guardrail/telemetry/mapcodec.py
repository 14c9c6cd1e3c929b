"""Compact encoding of relevancy maps for telemetry, and the byte budget that decides which maps travel.

A map is a 2-D float array ``(rows, cols)`` (one value per image patch). It is
quantised linearly between its own minimum and maximum to 8 bits (255 steps)
or 4 bits (15 steps, two values per byte), base64-encoded, and described by a
small dict::

    {"shape": [24, 24], "dtype": "u8", "scale": [0.013, 0.981], "data": "AAEC..."}

Decoding gives ``lo + q * (hi - lo) / levels``, so every value is within half a
step of the original: ``|decoded - map| <= (hi - lo) / levels / 2`` with
``levels`` 255 (``u8``) or 15 (``u4``). A 24x24 map takes 768 characters at 8 bits.

The byte budget (:class:`MapBudget`) keeps a span's size bounded when the
answer is long; see its docstring for the rule.

Pure numpy: no OpenTelemetry import, no I/O.

    >>> import numpy as np
    >>> m = np.linspace(0, 1, 12).reshape(3, 4)
    >>> enc = encode_map(m)
    >>> enc["shape"], enc["dtype"], enc["scale"]
    ([3, 4], 'u8', [0.0, 1.0])
    >>> bool(np.abs(decode_map(enc) - m).max() <= 1 / 255 / 2)
    True
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastrm_common.errors import DataError, RelevancyError

import guardrail.telemetry.semconv as semconv

__all__ = [
    "DEFAULT_MAP_BUDGET_BYTES",
    "MapBudget",
    "MapPlan",
    "decode_map",
    "encode_map",
    "encoded_nbytes",
    "map_attributes",
    "map_from_attributes",
]

DEFAULT_MAP_BUDGET_BYTES = 64 * 1024
_DTYPES = {8: "u8", 4: "u4"}
_BITS = {v: k for k, v in _DTYPES.items()}


def encode_map(map_2d: Any, *, bits: int = 8) -> dict[str, Any]:
    """Quantise a ``(rows, cols)`` map to ``bits`` (8 or 4) and base64 it.

    Input: any finite 2-D array-like (values need not be in [0, 1]; the scale
    is the map's own min/max). Output: ``{"shape": [rows, cols], "dtype":
    "u8"|"u4", "scale": [lo, hi], "data": base64 str}``, JSON-serialisable.
    A constant map has ``lo == hi`` and decodes exactly.

    Raises :class:`RelevancyError` for a map that is not 2-D, is empty or has
    NaN/inf values, and ``ValueError`` for ``bits`` other than 8 or 4.
    """
    if bits not in _DTYPES:
        raise ValueError(f"unsupported bits {bits!r}; expected one of: 8, 4")
    a = np.asarray(map_2d, dtype=np.float64)
    if a.ndim != 2 or a.size == 0:
        raise RelevancyError(f"expected a non-empty 2-D map (rows, cols), got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise RelevancyError(f"map of shape {tuple(a.shape)} has {int((~np.isfinite(a)).sum())} NaN or infinite values")
    lo, hi = float(a.min()), float(a.max())
    levels = (1 << bits) - 1
    if hi > lo:
        q = np.rint((a - lo) * (levels / (hi - lo))).clip(0, levels).astype(np.uint8)  # (rows, cols)
    else:
        q = np.zeros(a.shape, dtype=np.uint8)
    flat = q.ravel()  # (rows*cols,) row-major
    if bits == 4:
        if flat.size % 2:
            flat = np.append(flat, np.uint8(0))
        flat = (flat[0::2] << 4) | flat[1::2]  # high nibble first
    return {
        "shape": [int(a.shape[0]), int(a.shape[1])],
        "dtype": _DTYPES[bits],
        "scale": [lo, hi],
        "data": base64.b64encode(flat.tobytes()).decode("ascii"),
    }


def decode_map(encoded: Mapping[str, Any], *, dtype: Any = np.float64) -> np.ndarray:
    """Inverse of :func:`encode_map`: a ``(rows, cols)`` array of ``dtype``.

    Raises :class:`DataError` naming the problem when the dict is malformed
    (missing key, unknown dtype, bad base64, data length not matching shape).
    """
    try:
        rows, cols = (int(x) for x in encoded["shape"])
        kind = encoded["dtype"]
        lo, hi = (float(x) for x in encoded["scale"])
        raw = base64.b64decode(encoded["data"], validate=True)
    except KeyError as exc:
        raise DataError(f"encoded map lacks the key {exc.args[0]!r}; expected shape, dtype, scale, data") from None
    except (TypeError, ValueError, binascii.Error) as exc:
        raise DataError(f"malformed encoded map: {exc}") from None
    if kind not in _BITS:
        raise DataError(f"unknown map dtype {kind!r}; expected one of: {', '.join(_BITS)}")
    if rows <= 0 or cols <= 0:
        raise DataError(f"bad map shape [{rows}, {cols}]")
    bits = _BITS[kind]
    n = rows * cols
    q = np.frombuffer(raw, dtype=np.uint8)
    if bits == 4:
        q = np.stack([q >> 4, q & 0x0F], axis=1).ravel()  # (2 * bytes,)
        expected = (n + 1) // 2
    else:
        expected = n
    if len(raw) != expected:
        raise DataError(f"encoded map has {len(raw)} bytes; shape [{rows}, {cols}] at {bits} bits needs {expected}")
    levels = (1 << bits) - 1
    values = lo + q[:n].astype(np.float64) * ((hi - lo) / levels)
    return values.reshape(rows, cols).astype(dtype, copy=False)


def encoded_nbytes(encoded: Mapping[str, Any]) -> int:
    """Size of an encoding as compact JSON, in bytes: what the budget counts."""
    return len(json.dumps(encoded, separators=(",", ":")))


def map_attributes(encoded: Mapping[str, Any]) -> dict[str, Any]:
    """An encoding as flat span-event attributes (OpenTelemetry allows no nested values).

    ``{"fastrm.map.shape": (r, c), "fastrm.map.dtype": "u8", "fastrm.map.scale": (lo, hi), "fastrm.map.data": "..."}``
    """
    return {
        semconv.MAP_SHAPE: tuple(int(x) for x in encoded["shape"]),
        semconv.MAP_DTYPE: str(encoded["dtype"]),
        semconv.MAP_SCALE: tuple(float(x) for x in encoded["scale"]),
        semconv.MAP_DATA: str(encoded["data"]),
    }


def map_from_attributes(attributes: Mapping[str, Any], *, dtype: Any = np.float64) -> np.ndarray | None:
    """The map carried by event attributes (see :func:`map_attributes`), or None if the event has none."""
    if semconv.MAP_DATA not in attributes:
        return None
    try:
        encoded = {
            "shape": attributes[semconv.MAP_SHAPE],
            "dtype": attributes[semconv.MAP_DTYPE],
            "scale": attributes[semconv.MAP_SCALE],
            "data": attributes[semconv.MAP_DATA],
        }
    except KeyError as exc:
        raise DataError(f"event has {semconv.MAP_DATA} but lacks {exc.args[0]!r}") from None
    return decode_map(encoded, dtype=dtype)


@dataclass(frozen=True)
class MapPlan:
    """Which maps a span carries.

    - ``encoded``: token position (index into the maps given) -> encoding, for the attached maps;
    - ``dropped``: positions whose maps were left out, ascending;
    - ``bits``: the quantisation used (8, or 4 when the budget forced it);
    - ``nbytes``: total :func:`encoded_nbytes` of the attached maps.
    """

    encoded: dict[int, dict[str, Any]] = field(default_factory=dict)
    dropped: tuple[int, ...] = ()
    bits: int = 8
    nbytes: int = 0


@dataclass(frozen=True)
class MapBudget:
    """How many bytes of maps one span may carry, and how to fit them.

    ``max_bytes`` counts :func:`encoded_nbytes` of the attached maps (not the
    other event attributes); ``None`` means unlimited, ``0`` attaches none.

    The rule, applied by :meth:`plan`:

    1. every map at ``bits`` (default 8) if they all fit;
    2. else every map at ``min_bits`` (default 4; set ``min_bits=bits`` to
       never coarsen) if they all fit;
    3. else, at ``min_bits``, maps are taken in priority order -- the
       ``priority`` positions first (the guard passes the answer's scored
       tokens), then the others in generation order -- each one that still
       fits is attached; the rest are dropped and their positions recorded in
       :attr:`MapPlan.dropped` (the span reports the count).

    Maps are never resized, so a decoded map always has the grid shape of the
    original and is within half a quantisation step of it.

    >>> import numpy as np
    >>> maps = [np.random.default_rng(i).random((24, 24)) for i in range(10)]
    >>> plan = MapBudget(max_bytes=1500).plan(maps, priority=[7, 8])
    >>> plan.bits, sorted(plan.encoded), len(plan.dropped)
    (4, [0, 7, 8], 7)
    """

    max_bytes: int | None = DEFAULT_MAP_BUDGET_BYTES
    bits: int = 8
    min_bits: int = 4

    def __post_init__(self) -> None:
        if self.max_bytes is not None and (isinstance(self.max_bytes, bool) or self.max_bytes < 0):
            raise ValueError(f"max_bytes must be None or >= 0, got {self.max_bytes!r}")
        for name in ("bits", "min_bits"):
            if getattr(self, name) not in _DTYPES:
                raise ValueError(f"unsupported {name} {getattr(self, name)!r}; expected one of: 8, 4")
        if self.min_bits > self.bits:
            raise ValueError(f"min_bits ({self.min_bits}) must not exceed bits ({self.bits})")

    def plan(self, maps: Sequence[Any], priority: Sequence[int] = ()) -> MapPlan:
        """Encode ``maps`` (each ``(rows, cols)``) and choose which to attach; see the class docstring."""
        n = len(maps)
        if n == 0:
            return MapPlan(bits=self.bits)
        if self.max_bytes == 0:
            return MapPlan(dropped=tuple(range(n)), bits=self.bits)
        encoded = [encode_map(m, bits=self.bits) for m in maps]
        sizes = [encoded_nbytes(e) for e in encoded]
        if self.max_bytes is None or sum(sizes) <= self.max_bytes:
            return MapPlan(dict(enumerate(encoded)), (), self.bits, sum(sizes))
        if self.min_bits != self.bits:
            encoded = [encode_map(m, bits=self.min_bits) for m in maps]
            sizes = [encoded_nbytes(e) for e in encoded]
            if sum(sizes) <= self.max_bytes:
                return MapPlan(dict(enumerate(encoded)), (), self.min_bits, sum(sizes))
        seen: set[int] = set()
        order: list[int] = []
        for i in (*priority, *range(n)):
            if not 0 <= i < n:
                raise IndexError(f"priority position {i} is out of range for {n} maps")
            if i not in seen:
                seen.add(i)
                order.append(i)
        kept: dict[int, dict[str, Any]] = {}
        total = 0
        for i in order:
            if total + sizes[i] <= self.max_bytes:
                kept[i] = encoded[i]
                total += sizes[i]
        dropped = tuple(i for i in range(n) if i not in kept)
        return MapPlan(dict(sorted(kept.items())), dropped, self.min_bits, total)
