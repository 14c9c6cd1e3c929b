"""Overlays sit on the pixels the model saw: checked against real processors on non-square images."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from transformers import CLIPImageProcessor

from guardrail.traces.render import default_view_box, explained_figure, overlay, view_box
from shapesvqa.assets import reference_model_path


def _shipped():
    proc = CLIPImageProcessor.from_pretrained(reference_model_path())
    return proc, 12  # patch size of the shipped reference model


def _llava15():
    """LLaVA-1.5's image processor settings (shortest edge 336, centre crop 336, patch 14), built here."""
    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              do_center_crop=True, resample=3)
    return proc, 14


def _scene(width, height, square):
    img = Image.new("RGB", (width, height), (128, 128, 128))
    ImageDraw.Draw(img).rectangle(square, fill=(230, 20, 20))
    return img


def _map_from_processor(proc, patch, img):
    """The patch grid cells in which the processor's own output shows the red square (ground truth)."""
    pv = proc(images=img, return_tensors="np")["pixel_values"][0]  # (3, S, S)
    mean, std = np.array(proc.image_mean)[:, None, None], np.array(proc.image_std)[:, None, None]
    rgb = (pv * std + mean).transpose(1, 2, 0)  # (S, S, 3) in [0, 1]
    red = (rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.35)
    s = rgb.shape[0] // patch
    cells = red[: s * patch, : s * patch].reshape(s, patch, s, patch).mean(axis=(1, 3))  # (rows, cols)
    assert cells.max() > 0.5, "the square must be inside what the model sees"
    return (cells > 0.5).astype(np.float32)


def _painted_bbox(shown):
    a = np.asarray(shown, dtype=int)
    colourful = (np.abs(a[..., 0] - a[..., 2]) > 60)  # the ramp's top is yellow; grey and dimmed pixels are not
    ys, xs = np.nonzero(colourful)
    return xs.min(), xs.max(), ys.min(), ys.max()


CASES = [
    (_shipped, 192, 96, (55, 30, 77, 52)),  # the issue's example: wide image, square left of centre
    (_shipped, 96, 200, (30, 120, 60, 150)),  # tall image
    (_shipped, 150, 110, (90, 40, 110, 70)),  # needs a resize before the crop
    (_llava15, 640, 360, (300, 100, 380, 180)),  # LLaVA-1.5-style centre crop of a 16:9 photo
    (_llava15, 300, 500, (60, 200, 200, 300)),
]


@pytest.mark.parametrize("make, width, height, square", CASES)
def test_overlay_paints_the_patches_where_the_object_is(make, width, height, square):
    proc, patch = make()
    img = _scene(width, height, square)
    m = _map_from_processor(proc, patch, img)
    box = view_box(proc, width, height)
    shown = overlay(img, m, box=box, size=max(width, height))  # scale 1: display = original pixels
    assert shown.size == (width, height)
    x0, x1, y0, y1 = _painted_bbox(shown)
    # the painted cells cover the square and reach past it by less than one patch (in original pixels)
    cell_w, cell_h = (box[2] - box[0]) / m.shape[1], (box[3] - box[1]) / m.shape[0]
    sx0, sy0, sx1, sy1 = square
    assert x0 <= sx0 + cell_w / 2 and x1 >= sx1 - cell_w / 2
    assert y0 <= sy0 + cell_h / 2 and y1 >= sy1 - cell_h / 2
    assert x0 >= sx0 - cell_w and x1 <= sx1 + cell_w and y0 >= sy0 - cell_h and y1 <= sy1 + cell_h


def test_the_issue_example_was_misplaced_by_stretching():
    """What the old overlay did (stretch the image to a square) puts the map elsewhere: the test above can fail."""
    proc, patch = _shipped()
    img = _scene(192, 96, (55, 30, 77, 52))
    m = _map_from_processor(proc, patch, img)
    stretched = overlay(img, m, box=(0.0, 0.0, 192.0, 96.0), size=192)
    x0, x1, _, _ = _painted_bbox(stretched)
    assert x1 < 55 or x0 > 77 or x1 - x0 > 40  # not on the square


def test_view_box_values():
    proc, _ = _shipped()
    assert view_box(proc, 192, 96) == (48.0, 0.0, 144.0, 96.0)
    assert view_box(proc, 96, 96) == (0.0, 0.0, 96.0, 96.0)
    assert default_view_box(192, 96) == (48.0, 0.0, 144.0, 96.0)
    stretch = CLIPImageProcessor(size={"height": 64, "width": 64}, do_center_crop=False)
    assert view_box(stretch, 200, 100) == (0.0, 0.0, 200.0, 100.0)


def test_outside_the_box_is_dimmed_and_object_colours_are_not_tinted():
    img = _scene(192, 96, (10, 10, 30, 30))  # the square lies outside the centre crop
    m = np.zeros((8, 8), dtype=np.float32)
    m[0, 0] = 1.0
    shown = np.asarray(overlay(img, m, size=192), dtype=int)
    assert shown[20, 20, 0] < 0.5 * np.asarray(img)[20, 20, 0]  # dimmed
    assert shown[50, 100, 0] == shown[50, 100, 1] == shown[50, 100, 2]  # inside, low value: plain grey


def test_explained_figure(tmp_path):
    img = _scene(192, 96, (55, 30, 77, 52))
    m = np.random.default_rng(0).random((8, 8)).astype(np.float32)
    out = explained_figure(tmp_path / "f.png", img, m, title="Q: what colour? A: red", lines=("verdict confident",))
    fig = Image.open(out)
    assert fig.size[0] > 600 and fig.size[1] > 200  # two panels side by side, sized to the 2:1 image
    assert fig.size[0] > 2 * fig.size[1]
    a = np.asarray(fig.convert("RGB"), dtype=int)
    assert (np.abs(a[..., 0] - a[..., 2]) > 100).sum() > 500  # the colour bar and the map are there
    alone = explained_figure(tmp_path / "g.png", None, m)
    assert Image.open(alone).size[0] > 300
