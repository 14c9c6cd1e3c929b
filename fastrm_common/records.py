"""Reading a labelled VQA set for calibration (the ShapesVQA export format).

One JSON object per line::

    {"id": "q00017", "image": "images/00017.png", "question": "How many red cubes?", "answers": ["2", "2", "two"]}

- ``id``: unique string (numbers are accepted and turned into strings);
- ``image``: path of the image, **relative to the JSONL file's folder** (absolute paths
  are kept as they are);
- ``question``: non-empty string;
- ``answers``: non-empty list of reference answers (strings); one reference means exact
  match, several mean VQA soft accuracy (:mod:`fastrm_common.vqa`);
- any other field is kept on the record (``record.model_extra``).

Blank lines are ignored. A malformed line (bad JSON, a missing or invalid field, a
duplicate id, an image that does not exist) becomes a :class:`DataProblem` with its line
number and is skipped, or, with ``strict=True``, the whole file is rejected with a
:class:`DataError` listing the problems. Nothing is ever silently mis-scored.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fastrm_common.errors import DataError

__all__ = ["DataProblem", "VQARecord", "dataset_hash", "open_regular", "read_vqa_jsonl"]


def open_regular(path: str | os.PathLike[str]):
    """Open ``path`` for reading in binary mode, if it is a regular file; else ``OSError``.

    Every file a user names (policy, calibration, data, trace, signals) is opened through this:
    a FIFO would block ``open`` or ``read`` forever (until some writer appears), and ``/dev/zero``
    never ends. The file is opened non-blocking and checked with ``fstat`` on the open descriptor
    (no race between the check and the read), then switched back to blocking reads. Callers
    already turn ``OSError`` into their own error class; this one reads "not a regular file".
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a device or socket"
            raise OSError(errno.EINVAL, f"not a regular file (it is {what})", os.fspath(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

_MAX_LISTED_PROBLEMS = 10


class VQARecord(BaseModel):
    """One labelled question. ``image`` is resolved to a path after reading."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True, frozen=True)

    id: str = Field(min_length=1)
    image: Path
    question: str
    answers: list[str] = Field(min_length=1)

    @field_validator("question")
    @classmethod
    def _non_empty_question(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("question is empty")
        return value

    @field_validator("answers")
    @classmethod
    def _non_empty_answers(cls, value: list[str]) -> list[str]:
        if any(not a.strip() for a in value):
            raise ValueError("reference answers must be non-empty strings")
        return value


@dataclass(frozen=True)
class DataProblem:
    """A line of the data file that was not used, and why."""

    path: Path
    line: int  # 1-based
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<record>"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def read_vqa_jsonl(
    path: str | Path,
    strict: bool = False,
    *,
    check_images: bool = True,
) -> tuple[list[VQARecord], list[DataProblem]]:
    """Parse a VQA JSONL file.

    Args:
        path: the ``.jsonl`` file.
        strict: raise :class:`DataError` if any line is malformed, instead of skipping it.
        check_images: report records whose image file does not exist.

    Returns:
        ``(records, problems)``: the valid records in file order, with ``image``
        resolved against the file's folder, and one :class:`DataProblem` per skipped line.

    Raises:
        DataError: the file cannot be read, holds no valid record, or (``strict``) has
            a malformed line.

    Example:
        >>> records, problems = read_vqa_jsonl("data/shapes.jsonl")  # doctest: +SKIP
        >>> for p in problems: print(p)  # doctest: +SKIP
        data/shapes.jsonl:12: answers: List should have at least 1 item after validation, not 0
    """
    path = Path(path)
    try:
        with open_regular(path) as fh:
            text = fh.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read data file {str(path)!r}: {exc}") from exc
    base = path.resolve().parent

    records: list[VQARecord] = []
    problems: list[DataProblem] = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(DataProblem(path, lineno, f"invalid JSON: {exc.msg} (column {exc.colno})"))
            continue
        if not isinstance(raw, dict):
            problems.append(DataProblem(path, lineno, f"expected a JSON object, got {type(raw).__name__}"))
            continue
        try:
            record = VQARecord.model_validate(raw)
        except ValidationError as exc:
            problems.append(DataProblem(path, lineno, _describe(exc)))
            continue
        if record.id in seen:
            problems.append(DataProblem(path, lineno, f"duplicate id {record.id!r} (first on line {seen[record.id]})"))
            continue
        image = record.image if record.image.is_absolute() else base / record.image
        if check_images and not image.is_file():
            problems.append(DataProblem(path, lineno, f"image not found: {str(image)!r}"))
            continue
        seen[record.id] = lineno
        records.append(record.model_copy(update={"image": image}))

    if problems and strict:
        listed = "\n  ".join(str(p) for p in problems[:_MAX_LISTED_PROBLEMS])
        more = len(problems) - _MAX_LISTED_PROBLEMS
        suffix = f"\n  ... and {more} more" if more > 0 else ""
        raise DataError(f"{len(problems)} malformed line(s) in {str(path)!r}:\n  {listed}{suffix}")
    if not records:
        raise DataError(
            f"no valid record in {str(path)!r}"
            + (f" ({len(problems)} malformed line(s), first: {problems[0]})" if problems else " (the file is empty)")
        )
    return records, problems


def dataset_hash(path: str | Path) -> str:
    """SHA-256 of the file's bytes, as 64 hex digits (identifies the calibration data).

    Raises:
        DataError: the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open_regular(path) as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise DataError(f"cannot read data file {str(path)!r}: {exc}") from exc
    return digest.hexdigest()
