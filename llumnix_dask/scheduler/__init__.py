"""The Llumnix global scheduler on Dask, and the preload that installs it.

``dask scheduler --preload llumnix_dask.scheduler`` starts a plain Dask scheduler with the global scheduler
plugin inside. Its policy comes from Dask config ``llumnix.policy`` (a mapping of PolicyConfig fields), e.g.
``DASK_LLUMNIX__POLICY__DISPATCH=infaas dask scheduler --preload llumnix_dask.scheduler``.
"""

from __future__ import annotations

from typing import Any

from llumnix_dask.config import PolicyConfig

__all__ = ["GlobalSchedulerPlugin", "PLUGIN_NAME", "dask_setup", "policy_from_dask_config"]


def policy_from_dask_config() -> PolicyConfig:
    import dask

    from llumnix_dask.config import updated_policy

    return updated_policy(PolicyConfig(), dict(dask.config.get("llumnix.policy", default={}) or {}))


def dask_setup(scheduler: Any) -> None:
    """Preload hook: add the global scheduler plugin (its start() runs when the scheduler starts)."""
    from llumnix_dask.scheduler.plugin import PLUGIN_NAME, GlobalSchedulerPlugin

    if PLUGIN_NAME not in scheduler.plugins:
        scheduler.add_plugin(GlobalSchedulerPlugin(policy_from_dask_config()), name=PLUGIN_NAME)


def _register_dashboard_page() -> None:
    # A scheduler imports its preload modules before it starts its HTTP server: add the Llumnix page now.
    from llumnix_dask.widgets.dashboard import register_page_if_preloading

    register_page_if_preloading()


_register_dashboard_page()


def __getattr__(name: str) -> Any:
    if name in ("GlobalSchedulerPlugin", "PLUGIN_NAME"):
        from llumnix_dask.scheduler import plugin

        return getattr(plugin, name)
    raise AttributeError(name)
