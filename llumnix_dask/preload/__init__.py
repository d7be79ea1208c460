"""Dask preload modules that make a plain Dask deployment a llumnix-dask cluster (multi-host)::

    dask scheduler --preload llumnix_dask.preload.scheduler
    dask worker tcp://scheduler:8786 --preload llumnix_dask.preload.worker
    llumnix-dask up --scheduler tcp://scheduler:8786        # or Cluster(address=...) in Python

Their settings come from Dask config: ``llumnix.policy`` (PolicyConfig fields) for the scheduler,
``llumnix.engine`` (EngineConfig fields) and ``llumnix.migration`` for workers, e.g.
``DASK_LLUMNIX__POLICY__DISPATCH=infaas`` or ``DASK_LLUMNIX__ENGINE__BACKEND=vllm``.
"""
