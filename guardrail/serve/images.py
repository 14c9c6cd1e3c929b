"""Images of a chat request: ``data:`` URLs, or ``file://`` URLs inside one allow-listed folder.

Remote URLs (http, https, ftp, ...) are refused, never fetched. A ``file://`` path is resolved
(symbolic links and ``..`` included) and must lie inside the folder given at start-up. The
pixel limit is checked on the header, before the image is decoded, so a small file that
inflates to a huge bitmap is refused cheaply.

    >>> import base64, io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (4, 3)).save(buf, format="PNG")
    >>> url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    >>> image_from_url(url, max_pixels=100).size
    (4, 3)
    >>> image_from_url("https://example.com/cat.png", max_pixels=100)
    Traceback (most recent call last):
    ...
    fastrm_common.errors.InputError: remote image URLs are not fetched; send the image as a data: URL
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path
from typing import Optional
from urllib.parse import unquote, urlparse

from PIL import Image

from fastrm_common.errors import InputError
from fastrm_common.images import to_rgb

__all__ = ["image_from_url"]


def _open_checked(data: io.BytesIO | Path, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(data)  # reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise InputError(f"the image has {w}x{h} = {w * h} pixels; the limit is {max_pixels}")
            img.load()
    except InputError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"the image could not be decoded ({type(exc).__name__})") from None
    return to_rgb(img)  # a 16-bit PNG scaled by its range, not clipped; 32-bit and float modes refused


def image_from_url(url: str, *, max_pixels: int, image_dir: Optional[Path] = None) -> Image.Image:
    """Decode the image an OpenAI ``image_url`` part points to; an RGB PIL image.

    Args:
        url: ``data:image/...;base64,...`` or ``file:///abs/path`` (only when ``image_dir`` is set).
        max_pixels: the largest width x height accepted.
        image_dir: the one folder file URLs may read from (resolved); None refuses file URLs.

    Raises :class:`InputError` with a message safe to show the caller (it names no path
    outside what the caller sent).
    """
    if not isinstance(url, str) or not url:
        raise InputError("image_url.url must be a non-empty string")
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise InputError("a data: image URL must be base64-encoded (data:image/png;base64,...)")
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise InputError("the data: image URL is not valid base64") from None
        return _open_checked(io.BytesIO(raw), max_pixels)
    scheme = urlparse(url).scheme.lower()
    if scheme == "file":
        if image_dir is None:
            raise InputError("file:// image URLs are disabled on this server (start it with --image-dir)")
        parsed = urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise InputError("file:// image URLs must name a local path")
        root = Path(image_dir).resolve()
        path = Path(unquote(parsed.path)).resolve()
        if not path.is_relative_to(root):
            raise InputError("the file:// image URL is outside the server's image folder")
        if not path.is_file():
            raise InputError("the file:// image URL names no file in the server's image folder")
        return _open_checked(path, max_pixels)
    raise InputError("remote image URLs are not fetched; send the image as a data: URL")
