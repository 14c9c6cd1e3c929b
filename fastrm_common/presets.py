"""Named presets: a short name (``"reference"``) for a model folder with its proxy and calibration.

A preset is registered by the package that ships it, through the entry-point group
``fastrm_guard.presets`` in its ``pyproject.toml``::

    [project.entry-points."fastrm_guard.presets"]
    reference = "shapesvqa.assets:REFERENCE"

or at run time with :func:`register_preset`. Every place that accepts a model name resolves it
here (:func:`get_preset`), so no library package imports the package that ships a preset.

    >>> from pathlib import Path
from typing import Any
    >>> register_preset(Preset("doc-example", model=lambda: Path("models/tiny")))
    >>> get_preset("doc-example").model()
    PosixPath('models/tiny')
    >>> get_preset("models/some-folder") is None          # not a preset: a path or a hub id
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastrm_common.errors import InputError
from fastrm_common.registry import Registry

__all__ = [
    "DEFAULT_PRESET",
    "ENTRY_POINT_GROUP",
    "Preset",
    "get_preset",
    "list_presets",
    "preset_claims",
    "preset_path",
    "register_preset",
    "resolve_model",
]

ENTRY_POINT_GROUP = "fastrm_guard.presets"
DEFAULT_PRESET = "reference"  # what the CLIs load when no --model is given


@dataclass(frozen=True)
class Preset:
    """Where a named preset's artifacts are.

    Each field is a function returning a path, called only when the artifact is needed, so a
    preset whose proxy is not shipped still loads its model. A missing artifact raises
    ``FileNotFoundError`` from that function, with how to build it. ``examples(n, seed)``, when
    given, returns ``n`` labelled questions (objects with ``id``, ``image`` (PIL), ``question``,
    ``answers``, ``family``) for demos; ``pope_examples(n_scenes, seed)``, when given, returns
    POPE-style object-existence questions about ``n_scenes`` scenes (the same fields, plus
    ``pope``: "positive" or the negatives' sampling, and ``describe_map(map) -> str``: where an
    answer map looks in the scene), so that a demo can show hallucinated "yes" answers.
    """

    name: str
    model: Callable[[], Path]
    proxy: Callable[[], Path] | None = None
    calibration: Callable[[], Path] | None = None
    examples: Callable[[int, int], Sequence[Any]] | None = None
    pope_examples: Callable[[int, int], Sequence[Any]] | None = None
    description: str = ""
    describe_examples: Callable[[int, int], Sequence[Any]] | None = None  # "Describe the image." scenes (demo)
    claim_splitter: str | None = None  # the claim splitter for the preset's answers (a SPLITTERS name)
    claim_calibration: Callable[[], Path | None] | None = None  # its claim calibration, None when not shipped


def _load_entry_points() -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in PRESETS:  # registered at run time: that one wins
            continue
        preset = ep.load()
        if not isinstance(preset, Preset):
            raise InputError(f"entry point {ep.value!r} ({ENTRY_POINT_GROUP}) is not a Preset")
        PRESETS.add(ep.name, preset)


#: the model presets by name (:class:`fastrm_common.registry.Registry`); the installed entry points
#: (group ``fastrm_guard.presets``) are read once, at the first lookup
PRESETS: Registry[Preset] = Registry("preset", loader=_load_entry_points)


def register_preset(preset: Preset, *, replace: bool = False) -> None:
    """Make ``preset`` resolvable by its name; a taken name is refused unless ``replace``
    (:class:`~fastrm_common.errors.RegistryError`)."""
    if not isinstance(preset, Preset):
        raise InputError(f"register_preset expects a Preset, got {type(preset).__name__}")
    PRESETS.add(preset.name, preset, replace=replace)


def list_presets() -> list[str]:
    """The names of the registered presets, sorted."""
    return PRESETS.names()


def get_preset(name: str | os.PathLike) -> Preset | None:
    """The preset called ``name``, or ``None`` when ``name`` is not one (then it is a path or hub id).

    A local folder of the same name shadows nothing: preset names are checked first, as
    ``"reference"`` always has been.
    """
    if not isinstance(name, (str, os.PathLike)):
        return None
    return PRESETS.find(os.fspath(name))


def resolve_model(name_or_path: str | os.PathLike) -> str | os.PathLike:
    """The model folder of a preset name; anything else (a folder, a hub id) unchanged."""
    preset = get_preset(name_or_path)
    return preset.model() if preset is not None else name_or_path


def preset_claims(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """The ``Guard`` keywords of a preset's claim set-up: ``claims`` (its splitter) and
    ``claim_calibration`` (its path), each only when the preset has one; empty for anything else."""
    preset = get_preset(name_or_path)
    out: dict[str, Any] = {}
    if preset is None:
        return out
    if preset.claim_splitter is not None:
        out["claims"] = preset.claim_splitter
    path = preset.claim_calibration() if preset.claim_calibration is not None else None
    if path is not None:
        out["claim_calibration"] = path
    return out


def preset_path(name_or_path: str | os.PathLike, artifact: str) -> Path | None:
    """The path of a preset's ``artifact`` (``"model"``, ``"proxy"`` or ``"calibration"``).

    ``None`` when ``name_or_path`` is not a preset or the preset has no such artifact; a
    ``FileNotFoundError`` (saying how to build it) when the preset has it but it is missing.
    """
    if artifact not in ("model", "proxy", "calibration"):
        raise InputError(f"unknown preset artifact {artifact!r}; expected one of: model, proxy, calibration")
    preset = get_preset(name_or_path)
    find = getattr(preset, artifact) if preset is not None else None
    return find() if find is not None else None
