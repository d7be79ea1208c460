"""The runnable examples in the nano engine's docstrings keep working."""

import doctest
import importlib

import pytest

MODULES = ["kv_cache", "sampling", "detokenizer", "engine"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(f"llumnix_dask.engine.nano.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
