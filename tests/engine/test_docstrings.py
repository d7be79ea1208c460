"""The runnable examples in the engines' docstrings keep working."""

import doctest
import importlib

import pytest

MODULES = ["nano.blocks", "nano.sampling", "nano.engine", "detokenizer", "hf_files"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"llumnix_dask.engine.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
