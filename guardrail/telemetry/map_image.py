"""A map painted over its image, as a picture: the overlay the trace viewers and the report show.

Pure PIL and numpy (no matplotlib), so the guard's telemetry can attach a small overlay to its span
(:func:`overlay_data_uri`, content capture only) and :mod:`guardrail.traces.render` draws the same
picture in files and figures.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from guardrail.inputs import Box, default_view_box

__all__ = ["RAMP", "overlay", "overlay_data_uri", "unit_scaled"]

# a perceptually ordered ramp (dark blue -> teal -> yellow), 8 steps
RAMP = [(13, 8, 135), (84, 2, 163), (139, 10, 165), (185, 50, 137), (219, 92, 104), (244, 136, 73),
         (254, 188, 43), (240, 249, 33)]


def unit_scaled(m: np.ndarray) -> np.ndarray:
    """``m`` min-max scaled to [0, 1] (all zeros for a flat map)."""
    m = np.asarray(m, dtype=float)
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if hi - lo < 1e-12 else (m - lo) / (hi - lo)


def _grid_index(width: int, height: int, box: Box, rows: int, cols: int, scale: float):
    """For each displayed pixel: the (row, col) of the map cell it shows, and whether it is inside the box."""
    left, top, right, bottom = box
    xs = (np.arange(width) + 0.5) / scale  # pixel centres in original coordinates
    ys = (np.arange(height) + 0.5) / scale
    col = np.floor((xs - left) / (right - left) * cols).astype(int)  # (W,)
    row = np.floor((ys - top) / (bottom - top) * rows).astype(int)  # (H,)
    inside = (row[:, None] >= 0) & (row[:, None] < rows) & (col[None, :] >= 0) & (col[None, :] < cols)  # (H, W)
    return np.clip(row, 0, rows - 1), np.clip(col, 0, cols - 1), inside


def _ramp_rgb(m: np.ndarray) -> np.ndarray:
    ramp = np.array(RAMP, dtype=np.float32)
    return ramp[np.clip((m * len(RAMP)).astype(int), 0, len(RAMP) - 1)]


def overlay(image: Image.Image | None, map_2d: np.ndarray, *, size: int = 256, alpha: float = 0.75,
            box: Box | None = None) -> Image.Image:
    """The map (min-max scaled, colour ramp) placed on ``image`` where the model saw it.

    The result keeps the image's aspect ratio, its longer side ``size`` px. ``box`` is the part of
    the image the map covers (:func:`view_box`; default :func:`default_view_box`). Inside the box
    the image is shown in grey and each patch is painted with an opacity proportional to its value,
    so the ramp's colours never mix with the objects' own colours; outside it the image is dimmed
    (the model never saw it). With ``image=None`` the map alone is drawn, ``size`` px square.
    """
    m = unit_scaled(map_2d)
    rows, cols = m.shape
    if image is None:
        heat = _ramp_rgb(m).astype(np.uint8)
        return Image.fromarray(heat, "RGB").resize((size, size), Image.NEAREST)
    img = image.convert("RGB")
    w, h = img.size
    box = box or default_view_box(w, h)
    scale = size / max(w, h)
    dw, dh = max(1, round(w * scale)), max(1, round(h * scale))
    base = np.asarray(img.resize((dw, dh), Image.BILINEAR), dtype=np.float32)  # (H, W, 3)
    grey = base.mean(axis=2, keepdims=True).repeat(3, axis=2)
    r, c, inside = _grid_index(dw, dh, box, rows, cols, scale)
    values = m[r[:, None], c[None, :]]  # (H, W)
    weight = (values * alpha)[..., None]
    painted = grey * (1 - weight) + _ramp_rgb(values) * weight
    out = np.where(inside[..., None], painted, base * 0.35 + 255 * 0.1)
    return Image.fromarray(out.clip(0, 255).astype(np.uint8), "RGB")




def overlay_data_uri(image: Image.Image | None, map_2d: np.ndarray, *, box: Box | None = None, size: int = 160,
                     colors: int = 64, max_bytes: int = 32_000) -> str | None:
    """:func:`overlay` as a ``data:image/png;base64,`` URI of at most ``max_bytes`` characters, or None.

    The picture is ``size`` px on its longer side and quantised to ``colors`` colours (a palette PNG of
    a few kB); if it is still too long it is halved once, then given up (None: nothing is attached).
    The image is content: call this only with content capture on.
    """
    for side in (size, size // 2):
        picture = overlay(image, map_2d, size=max(16, side), box=box).quantize(colors=colors)
        buf = io.BytesIO()
        picture.save(buf, format="PNG", optimize=True)
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
        if len(uri) <= max_bytes:
            return uri
    return None
