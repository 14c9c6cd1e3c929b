"""Opening images the same way everywhere: the Guard, the distillation pipeline, calibration.

Every image is checked against a pixel budget and an aspect-ratio limit *before* it is
decoded (PIL reads the size from the header), so a 100-byte PNG that claims 30000x30000
pixels, or a 1x20000 strip, is refused at once instead of costing gigabytes and seconds.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np

from fastrm_common.errors import GuardrailError, InputError

__all__ = ["DEFAULT_MAX_IMAGE_ASPECT_RATIO", "DEFAULT_MAX_IMAGE_PIXELS", "ImageLike", "check_image_size", "load_image", "to_rgb"]

ImageLike = Union[str, os.PathLike, "PIL.Image.Image", np.ndarray]  # noqa: F821

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels: above today's phone cameras (48 MP)
DEFAULT_MAX_IMAGE_ASPECT_RATIO = 20.0  # long side / short side; panoramas are ~4-10


def check_image_size(
    width: int,
    height: int,
    *,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_IMAGE_ASPECT_RATIO,
    error: type[GuardrailError] = InputError,
    name: str = "the image",
) -> None:
    """Raise ``error`` unless a ``width`` x ``height`` image is within the pixel and aspect-ratio limits."""
    if width < 1 or height < 1:
        raise error(f"{name} is {width}x{height}: it has no pixels")
    if width * height > max_pixels:
        raise error(
            f"{name} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} "
            "(raise it with Limits(max_image_pixels=...), or downscale the image)"
        )
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise error(
            f"{name} is {width}x{height}: aspect ratio {ratio:.0f}:1 exceeds the limit {max_aspect_ratio:g}:1 "
            "(raise it with Limits(max_image_aspect_ratio=...), or crop the image)"
        )


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")  # 0..65535, e.g. a 16-bit grayscale PNG
_NO_RANGE_MODES = ("I", "F")  # 32-bit integers or floats: no fixed range to map onto 0..255


def to_rgb(img, *, error: type[GuardrailError] = InputError, name: str = "the image"):
    """An RGB copy of the PIL image ``img``, with high-bit-depth pixels mapped by their range.

    PIL's own ``convert("RGB")`` clips a 16-bit image to 0/255 (a ramp becomes black and white),
    so the 16-bit modes (``I;16*``, 0..65535) are scaled to 0..255 first. Modes ``I`` and ``F``
    (32-bit integers, floats) have no fixed range and are refused with ``error``, as NumPy arrays
    that are not uint8 are: convert them to 8 bits yourself, with the range you know.
    """
    from PIL import Image

    if img.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.uint32)  # (H, W)
        return Image.fromarray(((wide * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if img.mode in _NO_RANGE_MODES:
        kind = "32-bit integer" if img.mode == "I" else "floating-point"
        raise error(
            f"{name} has mode {img.mode!r} ({kind} pixels), which has no fixed range to map to 8 bits; "
            "convert it yourself, e.g. Image.fromarray((array / array.max() * 255).round().astype(np.uint8))"
        )
    return img.convert("RGB")


def load_image(
    image: ImageLike,
    *,
    error: type[GuardrailError] = InputError,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float = DEFAULT_MAX_IMAGE_ASPECT_RATIO,
    copy: bool = True,
):
    """An RGB PIL image from a path, a PIL image or an (H, W, 3) uint8 array.

    ``copy=False``: an open RGB PIL image is returned as it is rather than copied (the Guard, which
    only reads it during the call and keeps the caller's image anyway).

    16-bit images (a 16-bit PNG, PIL mode ``I;16``) are scaled by their range; PIL images of
    modes ``I`` and ``F`` are refused like non-uint8 arrays (see :func:`to_rgb`).

    Anything else, a missing file, an unreadable one, a closed PIL image, an array that is
    not uint8 (a float array in [0, 1] would silently become black), or an image beyond
    ``max_pixels`` / ``max_aspect_ratio`` (checked from the file header, before decoding)
    raises ``error`` (default :class:`~fastrm_common.errors.InputError`; the distillation
    pipeline passes ``DataError``, so a bad record is skipped with the reason), with a
    message that names the path.
    """
    from PIL import Image, UnidentifiedImageError

    limits = dict(max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio, error=error)
    if isinstance(image, Image.Image):
        check_image_size(*image.size, **limits)
        try:
            if not copy and image.mode == "RGB" and getattr(image, "im", None) is not None:  # loaded and open
                return image
            return to_rgb(image, error=error)
        except GuardrailError:
            raise
        except (ValueError, OSError, AttributeError) as exc:  # e.g. "Operation on closed image"
            raise error(f"cannot use the PIL image: {exc}") from None
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise error(f"an image array must be (H, W, 3), got shape {image.shape}")
        if image.dtype != np.uint8:
            raise error(
                f"an image array must be uint8 in 0..255, got {image.dtype}; for floats in [0, 1] "
                "pass (array * 255).round().astype(np.uint8)"
            )
        check_image_size(image.shape[1], image.shape[0], **limits)
        return Image.fromarray(np.ascontiguousarray(image), "RGB")
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise error(f"image not found: {str(path)!r}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies
                with Image.open(path) as img:
                    check_image_size(*img.size, name=f"image {str(path)!r}", **limits)
                    return to_rgb(img, error=error, name=f"image {str(path)!r}")
        except GuardrailError:
            raise
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as exc:
            raise error(f"unreadable image {str(path)!r}: {exc}") from None
    raise error(f"unsupported image type {type(image).__name__}; expected a path, a PIL image or an array")
