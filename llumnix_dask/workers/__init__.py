"""Engine instances on Dask workers: the worker plugin (``plugin``), the llumlet that steps the engine
(``llumlet``), and the token streams to frontends (``streams``). A plain Dask worker becomes an instance
with ``dask worker --preload llumnix_dask.preload.worker`` (see :mod:`llumnix_dask.preload`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["InstanceWorkerPlugin", "Llumlet"]


def __getattr__(name: str) -> Any:
    if name == "InstanceWorkerPlugin":
        from llumnix_dask.workers.plugin import InstanceWorkerPlugin

        return InstanceWorkerPlugin
    if name == "Llumlet":
        from llumnix_dask.workers.llumlet import Llumlet

        return Llumlet
    raise AttributeError(name)
