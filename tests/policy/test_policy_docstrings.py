"""The runnable examples in the policy docstrings must keep working."""

import doctest

import pytest

import llumnix_dask.policy.dispatch
import llumnix_dask.policy.migration
import llumnix_dask.policy.scaling


@pytest.mark.parametrize("module", [llumnix_dask.policy.dispatch, llumnix_dask.policy.migration,
                                    llumnix_dask.policy.scaling], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
