"""The runnable examples in the public docstrings must keep working."""

import doctest

import pytest

import llumnix_dask
import llumnix_dask.config
import llumnix_dask.sim_config
import llumnix_dask.policy.load
import llumnix_dask.request


@pytest.mark.parametrize(
    "module", [llumnix_dask, llumnix_dask.config, llumnix_dask.sim_config, llumnix_dask.request, llumnix_dask.policy.load], ids=lambda m: m.__name__
)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{module.__name__} lost its examples"
    assert result.failed == 0
