"""What a guarded call takes in: images checked and loaded, prompts built, the processor's batch
prepared, and the part of each image the model really sees (processor geometry).

Bad input fails here, before any model work, with :class:`~fastrm_common.errors.InputError`.
"""

from __future__ import annotations

import os

from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from fastrm_common.errors import InputError
from fastrm_common.images import ImageLike, load_image
from fastrm_core.inputs import prepare_inputs

from guardrail.limits import Limits, check_question
from guardrail.telemetry.attributes import image_data_uri, image_reference

__all__ = ["Box", "CallImage", "check_items", "check_pairs", "cropped_content", "escalation_payload", "per_item_batch", "default_view_box", "prepare_call_inputs", "row_warnings", "view_box"]

Box = tuple[float, float, float, float]  # (left, top, right, bottom) in original image pixels


def default_view_box(width: int, height: int) -> Box:
    """The centred square of side ``min(width, height)``: a shortest-edge resize plus a square centre crop."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return (float(left), float(top), float(left + side), float(top + side))


def view_box(image_processor: Any, width: int, height: int) -> Box:
    """The part of a ``width`` x ``height`` image that ``image_processor`` hands to the model.

    Follows Hugging Face's CLIP-style processors: ``do_resize`` with ``size = {"shortest_edge": S}``
    (aspect kept, short side S, long side truncated as HF does) or ``{"height", "width"}``
    (stretched), then ``do_center_crop`` with ``crop_size`` (offsets floored as HF does). The
    box is in original pixels and may be fractional; it may extend outside the image if the
    crop is larger than the resized image (HF pads there).

    >>> from types import SimpleNamespace as P
    >>> view_box(P(do_resize=True, size={"shortest_edge": 96}, do_center_crop=True,
    ...            crop_size={"height": 96, "width": 96}), 192, 96)
    (48.0, 0.0, 144.0, 96.0)
    """
    proc = getattr(image_processor, "image_processor", image_processor)  # a full processor or its image part
    w, h = float(width), float(height)
    rw, rh = w, h
    size = _as_dict(getattr(proc, "size", None))
    if getattr(proc, "do_resize", False) and size:
        if "shortest_edge" in size:
            short = float(size["shortest_edge"])
            if w <= h:
                rw, rh = short, float(int(short * h / w))
            else:
                rw, rh = float(int(short * w / h)), short
        elif "height" in size and "width" in size:
            rw, rh = float(size["width"]), float(size["height"])
    left, top, right, bottom = 0.0, 0.0, rw, rh
    crop = _as_dict(getattr(proc, "crop_size", None))
    if getattr(proc, "do_center_crop", False) and crop and "height" in crop and "width" in crop:
        cw, ch = float(crop["width"]), float(crop["height"])
        left, top = float((int(rw) - int(cw)) // 2), float((int(rh) - int(ch)) // 2)
        right, bottom = left + cw, top + ch
    sx, sy = rw / w, rh / h
    return (left / sx, top / sy, right / sx, bottom / sy)

def _as_dict(value: Any) -> dict:
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    if isinstance(value, (int, float)):
        return {"shortest_edge": value}
    try:
        return {k: v for k, v in dict(value).items() if v is not None}
    except (TypeError, ValueError):
        return {k: getattr(value, k) for k in ("shortest_edge", "height", "width") if getattr(value, k, None)}


def cropped_content(image: Image.Image, box: Box, *, tolerance: int = 8) -> float | None:
    """Share of ``image``'s area outside ``box`` (what the model saw) when that part holds content.

    "Content" is any variation beyond ``tolerance`` (0..255, per channel) in the cut-away pixels:
    a flat border (padding, a plain background) is not content and gives None, as does a box
    that covers the whole image. Checked on a copy at most 256 px on its longer side.

    >>> from PIL import Image
    >>> img = Image.new("RGB", (100, 200), "white")
    >>> cropped_content(img, (0, 50, 100, 150)) is None      # a flat border: nothing lost
    True
    >>> img.paste((255, 0, 0), (40, 5, 60, 25))                # a red object above the crop
    >>> cropped_content(img, (0, 50, 100, 150))
    0.5
    """
    w, h = image.size
    left, top, right, bottom = max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])
    inside = max(0.0, right - left) * max(0.0, bottom - top)
    share = 1.0 - inside / float(w * h)
    if share <= 1e-6:
        return None
    scale = min(1.0, 256.0 / max(w, h))
    small = image.convert("RGB")
    if scale < 1.0:
        small = small.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.NEAREST)
    px = np.asarray(small, dtype=np.int16)  # (h', w', 3)
    ys = (np.arange(px.shape[0]) + 0.5) / scale
    xs = (np.arange(px.shape[1]) + 0.5) / scale
    outside = ~(((ys >= top) & (ys < bottom))[:, None] & ((xs >= left) & (xs < right))[None, :])  # (h', w')
    cut = px[outside]  # (n, 3)
    if cut.size == 0 or int((cut.max(axis=0) - cut.min(axis=0)).max()) <= tolerance:
        return None
    return round(share, 4)


def row_warnings(image: "CallImage | None", answer: str, stopped: bool, error: BaseException | None) -> list[str]:
    """What the user should know about one row beside its verdict: content the processor's crop cut
    away, an empty answer."""
    warnings = []
    cropped = image.cropped() if image is not None else None
    if cropped is not None:
        w, h = image.pil.size
        warnings.append(f"the model saw only part of this {w}x{h} image: the processor's centre crop cut away "
                        f"{100 * cropped:.0f}% of it, and content lies there; pad the image to a square to "
                        "show the model all of it")
    if not answer and error is None:
        warnings.append("the model gave an empty answer (it produced only its end-of-sequence token)"
                        if stopped else "the model gave an empty answer (no text in its tokens)")
    return warnings


class CallImage:
    """One call's image as the processor got it, and its identity for traces and escalations (computed once)."""

    def __init__(self, pil: Any, source: Any, processor: Any) -> None:
        self.pil = pil
        self.path = source if isinstance(source, (str, os.PathLike)) else None
        self.processor = processor
        self._ref: dict[str, Any] | None = None
        self._cropped: tuple[float | None] | None = None

    def box(self) -> Box | None:
        """The part of the image the model sees (:func:`view_box`), or None for an unusual processor."""
        try:
            return view_box(self.processor, *self.pil.size)
        except Exception:  # an unusual processor: no box, the viewer falls back to the centred square
            return None

    def reference(self) -> dict[str, Any]:
        if self._ref is None:
            self._ref = image_reference(self.pil, self.path, box=self.box())
        return self._ref

    def cropped(self) -> float | None:
        """Share of the image cut away by the processor when that part holds content, else None."""
        if self._cropped is None:
            box = self.box()
            self._cropped = (None if box is None else cropped_content(self.pil, box),)
        return self._cropped[0]


def check_items(images: Sequence[ImageLike], questions: Sequence[str], limits: Limits, tokenizer: Any) -> list:
    """The RGB images of the items once each question and image passed its checks (cheap ones first: a
    100k-character question never reaches the processor); the error of a batch of several names the
    item (``item 2: the question is empty``)."""
    several = len(questions) > 1
    for i, q in enumerate(questions):
        try:
            check_question(q, limits, tokenizer)
        except InputError as exc:
            raise InputError(f"item {i}: {exc}") if several else exc from None
    pil = []
    for i, img in enumerate(images):
        try:
            pil.append(load_image(img, max_pixels=limits.max_image_pixels, max_aspect_ratio=limits.max_image_aspect_ratio,
                                  copy=False))
        except InputError as exc:
            raise InputError(f"item {i}: {exc}") if several else exc from None
    return pil


def check_pairs(items: Any) -> list:
    """``items`` as a list of (image, question) pairs, or :class:`InputError`."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise InputError(f"items must be a sequence of (image, question) pairs, got {type(items).__name__}")
    if not all(isinstance(it, (tuple, list)) and len(it) == 2 for it in items):
        raise InputError("items must be a sequence of (image, question) pairs")
    return list(items)


def per_item_batch(items: Sequence[tuple[Any, str]], check: Callable[[Any, str], Any],
                   run: Callable[[list], list]) -> list:
    """A batch where one bad item does not fail the others: each item is ``check``-ed alone, the good
    ones ``run`` together (one by one if the processor refuses them as a whole), and each bad one gets a
    :class:`~guardrail.result.BatchItemError` (its index and the error) in its place."""
    from guardrail.result import BatchItemError

    out: list = [None] * len(items)
    good: list[int] = []
    for i, (image, question) in enumerate(items):
        try:
            check(image, question)
            good.append(i)
        except InputError as exc:
            out[i] = BatchItemError(index=i, error=InputError(f"item {i}: {exc}"))
    try:
        if good:
            for i, r in zip(good, run([items[i] for i in good])):
                out[i] = r
    except InputError:  # the processor refused the batch as a whole: find the item(s) one by one
        for i in good:
            try:
                out[i] = run([items[i]])[0]
            except InputError as exc:
                out[i] = BatchItemError(index=i, error=InputError(f"item {i}: {exc}"))
    return out


def prepare_call_inputs(model: Any, processor: Any, adapter: Any, limits: Limits, images: Sequence[ImageLike],
                        questions: Sequence[str], prompt: Callable[[str], str]) -> tuple[dict, list[CallImage], list]:
    """Check the questions (cheap checks first: a 100k-character question never reaches the
    processor), load the images within ``limits``, and build the processor's batch of each
    question's ``prompt(question)``.

    Returns ``(inputs, images, regions)``: the model's batch, each row's :class:`CallImage` and each
    row's image regions (``adapter.batch_regions``: the check that the prompt holds the image's
    tokens; the capture reuses them).
    """
    pil = check_items(images, questions, limits, processor.tokenizer)
    try:
        inputs = prepare_inputs(model, processor, pil, [prompt(q) for q in questions])
    except Exception as exc:  # the processor's own errors (image size, mode, ...) become one clear error
        raise InputError(f"the processor could not prepare the input: {type(exc).__name__}: {exc}") from exc
    try:
        regions = adapter.batch_regions(inputs)
    except InputError as exc:
        raise InputError(f"the prompt does not hold one image's tokens: {exc}") from exc
    return inputs, [CallImage(p, src, processor) for p, src in zip(pil, images)], regions


def escalation_payload(*, image: CallImage | None, capture_content: bool, **fields: Any) -> dict[str, Any]:
    """What a reviewer of an escalated row needs: ``fields`` (the question, the model's answer and what
    the user got, the scores, the model and guard artifacts) and the image by reference (its data
    only with content capture)."""
    payload: dict[str, Any] = dict(fields)
    if image is not None:
        payload["image"] = dict(image.reference())
        if capture_content:
            payload["image"]["data_uri"] = image_data_uri(image.pil)
    return payload
