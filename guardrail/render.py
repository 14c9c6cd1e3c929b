"""Drawing maps: coloured blocks in the terminal (rich) and PNG overlays on the image (PIL)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.text import Text

__all__ = ["heatmap_text", "overlay", "save_overlay"]

# a perceptually ordered ramp (dark blue -> teal -> yellow), 8 steps
_RAMP = [(13, 8, 135), (84, 2, 163), (139, 10, 165), (185, 50, 137), (219, 92, 104), (244, 136, 73),
         (254, 188, 43), (240, 249, 33)]


_SHADES = " ░▒▓█"


def _unit(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=float)
    lo, hi = float(m.min()), float(m.max())
    return np.zeros_like(m) if hi - lo < 1e-12 else (m - lo) / (hi - lo)


def heatmap_text(map_2d: np.ndarray, *, max_cols: int = 32) -> Text:
    """A (rows, cols) map as rich coloured blocks (two characters per patch), min-max scaled.

    Maps wider than ``max_cols`` patches are averaged down to fit a terminal.
    """
    m = _unit(_downsample(np.asarray(map_2d, dtype=float), max_cols))
    text = Text()
    for row in m:
        for v in row:
            r, g, b = _RAMP[min(int(v * len(_RAMP)), len(_RAMP) - 1)]
            shade = _SHADES[min(int(v * len(_SHADES)), len(_SHADES) - 1)]
            # colour where the terminal has it; the shade characters keep it readable where it has not
            text.append(shade * 2, style=f"rgb({r},{g},{b}) on rgb({r},{g},{b})" if v > 0 else None)
        text.append("\n")
    return text


def _downsample(m: np.ndarray, max_cols: int) -> np.ndarray:
    rows, cols = m.shape
    f = int(np.ceil(cols / max_cols))
    if f <= 1:
        return m
    r2, c2 = rows // f, cols // f
    return m[: r2 * f, : c2 * f].reshape(r2, f, c2, f).mean(axis=(1, 3))


def overlay(image: Image.Image | None, map_2d: np.ndarray, *, size: int = 256, alpha: float = 0.7) -> Image.Image:
    """The map (min-max scaled, colour ramp) over ``image`` (or alone when None), ``size`` px square.

    Each patch is blended with an opacity proportional to its value, so irrelevant patches leave the
    image as it is and the relevant ones are painted.
    """
    m = _unit(map_2d)
    ramp = np.array(_RAMP, dtype=np.float32)
    idx = np.clip((m * len(_RAMP)).astype(int), 0, len(_RAMP) - 1)
    heat = np.asarray(Image.fromarray(ramp[idx].astype(np.uint8), "RGB").resize((size, size), Image.NEAREST),
                      dtype=np.float32)  # (size, size, 3)
    if image is None:
        return Image.fromarray(heat.astype(np.uint8), "RGB")
    weight = np.asarray(Image.fromarray((m * 255).astype(np.uint8), "L").resize((size, size), Image.NEAREST),
                        dtype=np.float32)[..., None] / 255.0 * alpha  # (size, size, 1)
    base = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
    return Image.fromarray((base * (1 - weight) + heat * weight).astype(np.uint8), "RGB")


def save_overlay(path: str | Path, image: Image.Image | None, map_2d: np.ndarray, **kwargs) -> Path:
    """Write :func:`overlay` as a PNG; parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, map_2d, **kwargs).save(path)
    return path
