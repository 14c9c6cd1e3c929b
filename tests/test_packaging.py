"""Installing the package is quiet: setuptools reads pyproject.toml without a deprecation warning."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_without_setuptools_warnings(monkeypatch):
    pyprojecttoml = pytest.importorskip("setuptools.config.pyprojecttoml")
    from setuptools.dist import Distribution

    monkeypatch.chdir(ROOT)  # package discovery is relative to the project root
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "`project.license` as a TOML table is deprecated"
        dist = pyprojecttoml.apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert dist.metadata.license_expression == "Apache-2.0"
