"""``dask worker tcp://scheduler:8786 --preload llumnix_dask.preload.worker``: the worker becomes an engine
instance. Its EngineConfig comes from Dask config ``llumnix.engine`` and its MigrationConfig from
``llumnix.migration`` (e.g. ``DASK_LLUMNIX__ENGINE__BACKEND=vllm``).
"""

from __future__ import annotations

import asyncio
from typing import Any


async def dask_setup(worker: Any) -> None:
    """Preload hook: install the instance plugin once the worker is connected to its scheduler."""
    import dask

    from llumnix_dask.config import EngineConfig, MigrationConfig
    from llumnix_dask.workers.plugin import PLUGIN_NAME, InstanceWorkerPlugin

    if PLUGIN_NAME in getattr(worker, "plugins", {}):
        return
    engine = EngineConfig(**dict(dask.config.get("llumnix.engine", default={}) or {}))
    migration = MigrationConfig(**dict(dask.config.get("llumnix.migration", default={}) or {}))
    plugin = InstanceWorkerPlugin(engine, migration)

    async def install() -> None:
        # The plugin registers with the scheduler, so wait until this worker is connected.
        while worker.status.name not in ("running", "paused"):
            await asyncio.sleep(0.05)
        await worker.plugin_add(plugin, name=PLUGIN_NAME, catch_errors=False)

    asyncio.ensure_future(install())
