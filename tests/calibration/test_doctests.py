"""The examples in the docstrings run."""

import doctest
import importlib

import pytest

MODULES = ["entropy", "scores", "vqa", "fit", "artifact", "data"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"calibration.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
