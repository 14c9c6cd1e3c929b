"""Reading small JSON artifacts (calibration, proxy config, manifests) without surprises.

:func:`read_json` turns every way a hostile or damaged file can fail -- too large, not
UTF-8, not JSON, nested deeper than the parser's recursion allows, an integer of
thousands of digits, a key given twice -- into one error of the caller's class, with
the file named. Torch-free; imports only the standard library and the error classes.
"""

from __future__ import annotations

import json
import os
from typing import Any

from fastrm_common.errors import GuardrailError
from fastrm_common.records import open_regular

__all__ = ["MAX_JSON_BYTES", "read_json"]

MAX_JSON_BYTES = 32 << 20  # 32 MiB: an artifact's JSON is kilobytes; a KDE grid a few hundred kB


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(Exception):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def read_json(
    path: str | os.PathLike[str],
    *,
    error: type[GuardrailError],
    what: str = "file",
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """Parse the JSON file ``path``; any problem raises ``error`` naming ``what`` and the path.

    Refused: anything but a regular file (a FIFO would block forever), files over ``max_bytes``, bytes that are not UTF-8, invalid JSON, nesting
    too deep to parse, integers too long to convert, and duplicate keys in an object
    (plain ``json`` silently keeps the last one).
    """
    name = str(path)
    try:
        with open_regular(path) as fh:  # a FIFO or a device is refused, not read forever
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {name!r}: {exc.strerror or exc}") from None
    if len(data) > max_bytes:
        raise error(f"{what} {name!r} is larger than {max_bytes} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {name!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as dup:
        raise error(f"{what} {name!r} is invalid: duplicate key {dup.key!r}") from None
    except json.JSONDecodeError as exc:
        raise error(
            f"{what} {name!r} is not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from None
    except RecursionError:
        raise error(f"{what} {name!r} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # an integer beyond sys.get_int_max_str_digits()
        raise error(f"{what} {name!r} is not valid JSON: {exc}") from None
