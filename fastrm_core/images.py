"""Opening images the same way everywhere: the Guard, the distillation pipeline, calibration."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np

from fastrm_core.errors import GuardrailError, InputError

__all__ = ["ImageLike", "load_image"]

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray]  # noqa: F821


def load_image(image: ImageLike, *, error: type[GuardrailError] = InputError):
    """An RGB PIL image from a path, a PIL image or an (H, W, 3) uint8 array.

    Anything else, a missing file or an unreadable one raises ``error`` (default
    :class:`~fastrm_core.errors.InputError`; the distillation pipeline passes ``DataError``, so a
    bad record is skipped with the reason), with a message that names the path.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise error(f"an image array must be (H, W, 3), got shape {image.shape}")
        return Image.fromarray(np.asarray(image, dtype=np.uint8), "RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise error(f"image not found: {str(path)!r}")
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise error(f"unreadable image {str(path)!r}: {exc}") from exc
    raise error(f"unsupported image type {type(image).__name__}; expected a path, a PIL image or an array")
