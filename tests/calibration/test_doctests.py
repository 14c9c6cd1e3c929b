"""The examples in the docstrings run."""

import doctest
import importlib

import pytest

MODULES = ["calibration.entropy", "calibration.scores", "calibration.fit", "calibration.artifact",
           "fastrm_common.vqa", "fastrm_common.records"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
