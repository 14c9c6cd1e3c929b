"""Tiny random models of every supported family, built once per session (CPU, no download)."""

from __future__ import annotations

import pytest

from fastrm_core.families.testing import build_tiny


@pytest.fixture(scope="session")
def tiny_family():
    """``tiny_family(name)``: the session's :class:`~fastrm_core.families.testing.TinyVLM` of that family."""
    cache = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_tiny(name)
        return cache[name]

    return get

