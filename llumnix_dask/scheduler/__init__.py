"""The Llumnix global scheduler: its decisions without Dask (``core``), as a Dask SchedulerPlugin (``plugin``),
plain views of its state (``views``) and its statistics (``stats``). A plain Dask scheduler gets it with
``dask scheduler --preload llumnix_dask.preload.scheduler`` (see :mod:`llumnix_dask.preload`).
"""

from __future__ import annotations

from typing import Any

from llumnix_dask.config import PolicyConfig

__all__ = ["GlobalSchedulerPlugin", "PLUGIN_NAME", "policy_from_dask_config"]


def policy_from_dask_config() -> PolicyConfig:
    """PolicyConfig from Dask config ``llumnix.policy`` (a mapping of its fields)."""
    import dask

    from llumnix_dask.config import updated_policy

    return updated_policy(PolicyConfig(), dict(dask.config.get("llumnix.policy", default={}) or {}))


def __getattr__(name: str) -> Any:
    if name in ("GlobalSchedulerPlugin", "PLUGIN_NAME"):
        from llumnix_dask.scheduler import plugin

        return getattr(plugin, name)
    raise AttributeError(name)
