"""Engine backends behind one protocol (:class:`~llumnix_dask.engine.base.EngineBackend`).

Build one from a config with :func:`create_engine`::

    >>> from llumnix_dask.config import EngineConfig
    >>> engine = create_engine(EngineConfig(backend="nano"), "i0")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llumnix_dask.engine.base import EngineBackend, MigrationState, StepOutput

if TYPE_CHECKING:
    from llumnix_dask.config import EngineConfig

__all__ = ["EngineBackend", "MigrationState", "StepOutput", "create_engine"]


def create_engine(config: "EngineConfig", instance_id: str) -> EngineBackend:
    """The engine named by ``config.backend`` (torch and the model are imported only when needed)."""
    if config.backend == "nano":
        from llumnix_dask.engine.nano.engine import NanoEngine

        return NanoEngine(config, instance_id)
    raise ValueError(f"EngineConfig.backend: backend {config.backend!r} is not available in create_engine yet")
