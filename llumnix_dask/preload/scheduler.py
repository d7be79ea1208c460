"""``dask scheduler --preload llumnix_dask.preload.scheduler``: the global scheduler inside a Dask scheduler,
and the Llumnix page in its dashboard.

A scheduler imports its preload modules before it starts its HTTP server, so the page is added when this
module is imported (only a scheduler imports it); the plugin is added by :func:`dask_setup`.
"""

from __future__ import annotations

from typing import Any

from llumnix_dask.scheduler import policy_from_dask_config
from llumnix_dask.widgets.dashboard import register_page

register_page()


def dask_setup(scheduler: Any) -> None:
    """Preload hook: add the global scheduler plugin (its start() runs when the scheduler starts)."""
    from llumnix_dask.scheduler.plugin import PLUGIN_NAME, GlobalSchedulerPlugin

    if PLUGIN_NAME not in scheduler.plugins:
        scheduler.add_plugin(GlobalSchedulerPlugin(policy_from_dask_config()), name=PLUGIN_NAME)
