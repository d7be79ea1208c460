"""The runnable examples in the simulator, sim engine and workload docstrings must keep working."""

import doctest

import pytest

import llumnix_dask.engine.sim
import llumnix_dask.migration.source
import llumnix_dask.sim.simulator
import llumnix_dask.workloads


@pytest.mark.parametrize("module", [llumnix_dask.engine.sim, llumnix_dask.sim.simulator, llumnix_dask.workloads,
                                    llumnix_dask.migration.source],
                         ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
