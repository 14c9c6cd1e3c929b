"""Drawing maps: coloured blocks in the terminal (rich), overlays on the image (PIL) and explained figures.

Where a map sits on the image: the processor resizes and usually centre-crops, so the model
sees one box of the original image, and the (rows, cols) map covers that box only.
:func:`view_box` computes the box from the processor's real settings; :func:`overlay`
paints the map inside it and dims what the model never saw. Without a processor, the
default box is the centred square of side min(width, height) (what a shortest-edge resize
plus a square centre crop keeps, as in LLaVA-1.5 and the shipped reference model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from rich.text import Text

from guardrail.inputs import Box, cropped_content, default_view_box, view_box
from guardrail.telemetry.map_image import RAMP, overlay, unit_scaled as _unit

__all__ = ["RAMP", "cropped_content", "default_view_box", "explained_figure", "heatmap_text", "overlay", "save_overlay",
           "view_box"]

_SHADES = " ░▒▓█"


def heatmap_text(map_2d: np.ndarray, *, max_cols: int = 32) -> Text:
    """A (rows, cols) map as rich coloured blocks (two characters per patch), min-max scaled.

    Maps wider than ``max_cols`` patches are averaged down to fit a terminal.
    """
    m = _unit(_downsample(np.asarray(map_2d, dtype=float), max_cols))
    text = Text()
    for row in m:
        for v in row:
            r, g, b = RAMP[min(int(v * len(RAMP)), len(RAMP) - 1)]
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


def save_overlay(path: str | Path, image: Image.Image | None, map_2d: np.ndarray, **kwargs) -> Path:
    """Write :func:`overlay` as a PNG; parents are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay(image, map_2d, **kwargs).save(path)
    return path


def explained_figure(
    path: str | Path,
    image: Image.Image | None,
    map_2d: np.ndarray,
    *,
    box: Box | None = None,
    title: str = "",
    lines: tuple[str, ...] = (),
    value_label: str = "relevancy (proxy probability)",
) -> Path:
    """A PNG that explains itself: the image as it is (with the box the model saw) beside the map
    over it, a colour bar with the map's real values, and a title (question, answer, verdict, token).

    ``lines`` are extra caption lines under the title. Parents of ``path`` are created.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib import colors as mcolors
    from matplotlib import pyplot as plt
    from matplotlib.patches import Rectangle

    m = np.asarray(map_2d, dtype=float)
    lo, hi = float(m.min()), float(m.max())
    cmap = mcolors.ListedColormap(np.array(RAMP) / 255.0, name="fastrm")
    n_panels = 2 if image is not None else 1
    aspect = image.size[1] / image.size[0] if image is not None else m.shape[0] / m.shape[1]
    n_text = len([t for t in (title, *lines) if t])
    fig, axes = plt.subplots(1, n_panels, figsize=(4.0 * n_panels + 1.0, 4.0 * min(aspect, 1.6) + 0.5 + 0.25 * n_text),
                             dpi=80, squeeze=False, layout="constrained")
    axes = axes[0]
    if image is not None:
        img = image.convert("RGB")
        w, h = img.size
        box = box or default_view_box(w, h)
        axes[0].imshow(img, extent=(0, w, h, 0))
        # a black line under a white dashed one: the frame shows on white, black and busy images alike
        for colour, width, style in (("black", 3.5, "-"), ("white", 1.5, "--")):
            axes[0].add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                        edgecolor=colour, linewidth=width, linestyle=style))
        cut = cropped_content(img, box)
        axes[0].set_title("image (framed: what the model saw"
                          + (f"; {100 * cut:.0f}% of the image cut away)" if cut else ")"), fontsize=9)
        shown = overlay(img, m, box=box, size=max(256, max(w, h)))
        axes[1].imshow(shown, extent=(0, w, h, 0))
        axes[1].set_title("map over the image (in grey)", fontsize=9)
    else:
        axes[0].imshow(_unit(m), cmap=cmap, interpolation="nearest")
        axes[0].set_title("map (no image in the trace)", fontsize=9)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    norm = mcolors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1e-9)
    bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.9)
    bar.set_label(value_label, fontsize=8)
    text = "\n".join([t for t in (title, *lines) if t])
    if text:
        fig.suptitle(text, fontsize=9, ha="left", x=0.02)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
