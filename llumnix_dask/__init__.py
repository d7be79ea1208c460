"""llumnix-dask: serve LLMs on many engine instances and reschedule running requests live (Llumnix).

    >>> from llumnix_dask import SamplingParams, Priority
    >>> SamplingParams(max_tokens=8).greedy
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llumnix_dask.config import EngineConfig, FrontendConfig, MigrationConfig, PolicyConfig, ServeConfig
from llumnix_dask.sim_config import SimConfig
from llumnix_dask.request import Priority, Request, RequestStatus, SamplingParams

__version__ = "0.1.0"

__all__ = [
    "Cluster",
    "EngineConfig",
    "FrontendConfig",
    "MigrationConfig",
    "PolicyConfig",
    "Priority",
    "Request",
    "RequestStatus",
    "SamplingParams",
    "ServeConfig",
    "SimConfig",
]

if TYPE_CHECKING:  # pragma: no cover
    from llumnix_dask.cluster import Cluster


def __getattr__(name: str) -> Any:
    # Cluster pulls in Dask and torch; import it only when asked for.
    if name == "Cluster":
        from llumnix_dask.cluster import Cluster

        return Cluster
    raise AttributeError(f"module 'llumnix_dask' has no attribute {name!r}")
