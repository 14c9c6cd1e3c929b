"""docs/api.md keeps up with the public surface.

Every package whose ``__init__.py`` defines ``__all__`` has a ``## `package` `` section in
docs/api.md, and that section has exactly one ``### `name` `` entry per name of ``__all__``: a name
added to ``__all__`` without an entry fails here, and so does an entry for a name that is no longer
public. Nothing is skipped: a package that does not import fails too.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
API_DOC = ROOT / "docs" / "api.md"
TOP_LEVEL = ("guardrail", "fastrm_core", "calibration", "policies", "shapesvqa")
DOCUMENTED = (
    "guardrail",
    "guardrail.serve",
    "fastrm_core",
    "fastrm_core.distill",
    "calibration",
    "policies",
    "shapesvqa",
    "shapesvqa.assets",
)

_SECTION = re.compile(r"^## `([\w.]+)`[ \t]*$", re.MULTILINE)
_ENTRY = re.compile(r"^### `([^`]+)`[ \t]*$", re.MULTILINE)


def _sections() -> dict[str, str]:
    """``{package: the text of its section}``, from each ``## `package` `` heading to the next."""
    parts = _SECTION.split(API_DOC.read_text(encoding="utf-8"))
    names = parts[1::2]
    duplicated = [n for n, k in Counter(names).items() if k > 1]
    assert not duplicated, f"docs/api.md has several sections for: {', '.join(duplicated)}"
    return dict(zip(names, parts[2::2]))


def _defines_all(init: Path) -> bool:
    tree = ast.parse(init.read_text(encoding="utf-8"), filename=str(init))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


def _public_packages() -> list[str]:
    """Dotted names of the packages (top-level and nested) whose ``__init__.py`` defines ``__all__``."""
    found = []
    for top in TOP_LEVEL:
        for init in sorted((ROOT / top).rglob("__init__.py")):
            if "__pycache__" not in init.parts and _defines_all(init):
                found.append(".".join(init.parent.relative_to(ROOT).parts))
    return found


def test_every_public_package_has_a_section():
    packages = _public_packages()
    assert set(TOP_LEVEL) <= set(packages), "a top-level package lost its __all__"
    undocumented = sorted(set(packages) - set(DOCUMENTED))
    assert not undocumented, (
        f"packages with an __all__ that docs/api.md and this test do not cover: {', '.join(undocumented)}; "
        "add a '## `package`' section to docs/api.md and the package to DOCUMENTED"
    )
    sections = _sections()
    missing = [p for p in DOCUMENTED if p not in sections]
    assert not missing, f"docs/api.md has no '## `package`' section for: {', '.join(missing)}"
    unknown = sorted(set(sections) - set(DOCUMENTED))
    assert not unknown, f"docs/api.md has sections for packages this test does not know: {', '.join(unknown)}"


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_name_has_one_entry(package):
    public = importlib.import_module(package).__all__
    section = _sections().get(package)
    assert section is not None, f"docs/api.md has no '## `{package}`' section"
    entries = _ENTRY.findall(section)

    missing = [name for name in public if name not in entries]
    assert not missing, (
        f"docs/api.md lacks an entry ('### `name`' under '## `{package}`') for: {', '.join(missing)}"
    )
    stale = [name for name in entries if name not in public]
    assert not stale, f"docs/api.md documents names that {package}.__all__ does not export: {', '.join(stale)}"
    repeated = [name for name, k in Counter(entries).items() if k > 1]
    assert not repeated, f"docs/api.md has several entries under '## `{package}`' for: {', '.join(repeated)}"

