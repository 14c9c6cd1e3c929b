"""`make test` installs once and again only when pyproject.toml changes (a fake python records the calls)."""

from __future__ import annotations

import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Stands in for python3, the venv's python and its guardrail: logs its arguments; `-m venv DIR`
# makes DIR/bin/python and DIR/bin/guardrail.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$0" "$3/bin/guardrail"; fi
exit 0
"""


@pytest.fixture
def project(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fake = tmp_path / "fake-python3"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    return tmp_path


def make(project: Path, *targets: str) -> list[str]:
    """Run make in the copy; return the fake python's calls it made."""
    log = project / "calls.log"
    log.write_text("")
    # FASTRM_CHROMIUM: `make test` also checks for a headless browser; say there is one
    env = {**os.environ, "FAKE_LOG": str(log), "FASTRM_CHROMIUM": "/bin/true"}
    subprocess.run(["make", "-s", *targets, f"PY={project / 'fake-python3'}"], cwd=project, env=env, check=True,
                   capture_output=True, text=True, timeout=60)
    return log.read_text().splitlines()


def installs(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("-m pip install") and " -e " in f" {c} "]


def test_make_test_installs_once_then_only_when_pyproject_changes(project):
    first = make(project, "test")  # a fresh clone: venv, pip, the package, then the tests
    assert first[0] == "-m venv .venv" and len(installs(first)) == 1 and first[-1] == "-m pytest -q"
    again = make(project, "test")
    assert installs(again) == [] and again == ["-m ruff check .", "-m pytest -q"]  # lint, then the tests
    assert make(project, "demo") == ["demo"]
    pyproject = project / "pyproject.toml"
    for stamp in (project / ".venv").glob(".installed*"):  # installed a while ago ...
        earlier = pyproject.stat().st_mtime - 10
        os.utime(stamp, (earlier, earlier))
    pyproject.write_text(pyproject.read_text() + "\n")  # ... and pyproject.toml edited since
    changed = make(project, "test")
    assert len(installs(changed)) == 1 and changed[-1] == "-m pytest -q"
    assert installs(make(project, "test")) == []


def test_other_extras_install_again(project):
    make(project, "test")
    assert len(installs(make(project, "test", "EXTRAS=dev"))) == 1
    assert installs(make(project, "test", "EXTRAS=dev")) == []


def test_make_test_fast_lints_and_leaves_out_the_slow_tests(project):
    make(project, "test")
    assert make(project, "test-fast") == ["-m ruff check .", "-m pytest -q -m not slow -p no:hypothesispytest -n 2 --dist loadfile"]
    one = make(project, "test-fast", "FAST_WORKERS=0")  # one process, as pytest-xdist reads -n 0
    assert one == ["-m ruff check .", "-m pytest -q -m not slow -p no:hypothesispytest -n 0 --dist loadfile"]


def test_the_fast_loop_does_not_import_modules_whose_every_test_is_slow(tmp_path, request):
    """tests/conftest.py: with -m "not slow", a module marked slow at its top is not collected (nor imported)."""
    ignore = request.config.pluginmanager.get_plugin(str(ROOT / "tests" / "conftest.py")).pytest_ignore_collect
    slow = tmp_path / "test_all_slow.py"
    slow.write_text("import pytest\n\npytestmark = pytest.mark.slow  # why\nimport ray\n")
    mixed = tmp_path / "test_mixed.py"
    mixed.write_text("import pytest\n\n\n@pytest.mark.slow\ndef test_slow():\n    pass\n")

    def config(markexpr):
        return types.SimpleNamespace(getoption=lambda name: markexpr if name == "markexpr" else None)

    assert ignore(slow, config("not slow")) is True
    assert ignore(slow, config("not  slow")) is True
    assert ignore(mixed, config("not slow")) is None  # its fast tests still run
    assert ignore(slow, config("")) is None  # make test: everything
    assert ignore(slow, config("slow")) is None
