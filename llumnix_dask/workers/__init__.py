"""Engine instances on Dask workers: the worker plugin, the llumlet, and the worker preload.

``dask worker --preload llumnix_dask.workers tcp://scheduler:8786`` makes the worker an engine instance;
its EngineConfig comes from Dask config ``llumnix.engine`` (e.g. ``DASK_LLUMNIX__ENGINE__BACKEND=sim``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["InstanceWorkerPlugin", "Llumlet", "dask_setup"]


async def dask_setup(worker: Any) -> None:
    """Preload hook: install the instance plugin once the worker has started."""
    import dask

    from llumnix_dask.config import EngineConfig
    from llumnix_dask.workers.plugin import PLUGIN_NAME, InstanceWorkerPlugin

    if PLUGIN_NAME in getattr(worker, "plugins", {}):
        return
    engine = EngineConfig(**dict(dask.config.get("llumnix.engine", default={}) or {}))
    plugin = InstanceWorkerPlugin(engine)

    async def install() -> None:
        # The plugin registers with the scheduler, so wait until this worker is connected.
        import asyncio

        while worker.status.name not in ("running", "paused"):
            await asyncio.sleep(0.05)
        await worker.plugin_add(plugin, name=PLUGIN_NAME, catch_errors=False)

    import asyncio

    asyncio.ensure_future(install())


def __getattr__(name: str) -> Any:
    if name == "InstanceWorkerPlugin":
        from llumnix_dask.workers.plugin import InstanceWorkerPlugin

        return InstanceWorkerPlugin
    if name == "Llumlet":
        from llumnix_dask.workers.llumlet import Llumlet

        return Llumlet
    raise AttributeError(name)
