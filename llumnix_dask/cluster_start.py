"""Bringing up the Dask side of a :class:`~llumnix_dask.Cluster`: the embedded ``LocalCluster`` with the engine
workers' environment, the instance plugin on every worker, and clear errors when that fails."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from llumnix_dask.config import EngineConfig, MigrationConfig, worker_dask_config


def _keep_worker_heaps() -> None:
    """Spawn engine workers with the malloc settings of ``config.WORKER_PRE_SPAWN_ENV`` (faster KV transfers).

    Set in this process's Dask config, not in a ``with`` block, because the Nannies of later scale-ups read it
    too. A value the user configured wins; distributed's own default trim threshold (64 KiB) is replaced.
    """
    import dask
    import distributed  # noqa: F401  (loads distributed's config defaults)

    dask_defaults = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": 65536}
    ours = {
        k: v for k, v in worker_dask_config().items() if dask.config.get(k, None) in (None, dask_defaults.get(k))
    }
    if ours:
        dask.config.set(ours)


def refuse_spawned_reimport() -> None:
    """A script that starts a Cluster at module level runs again in every worker process it spawns (they
    import the script as their ``__main__``); say what to do instead of Dask's bare "Nanny failed to start"."""
    import multiprocessing

    if multiprocessing.parent_process() is not None and multiprocessing.current_process().name != "MainProcess":
        raise RuntimeError(f"a Cluster was started while a worker process imported its script: {_MAIN_GUARD_HINT}")


_MAIN_GUARD_HINT = (
    "move the code that starts the Cluster under  if __name__ == \"__main__\":  (the engine worker processes "
    "are spawned and import the script again, which would start another Cluster in each of them)"
)


def _explain_start_failure(exc: BaseException) -> BaseException:
    import sys

    main = sys.modules.get("__main__")
    if "Nanny failed to start" in str(exc) and getattr(main, "__file__", None):
        return RuntimeError(f"the engine workers failed to start. If {main.__file__} starts a Cluster at module "
                            f"level, {_MAIN_GUARD_HINT}")
    return exc


def with_cpu_threads(engine: EngineConfig, n_instances: int) -> EngineConfig:
    """``engine`` with this machine's cores divided among its instances, unless its threads are set.

    Dask starts workers with one OpenMP thread; an instance that owns several cores should use them.
    """
    if engine.cpu_threads is not None or engine.backend == "sim":
        return engine
    return dataclasses.replace(engine, cpu_threads=max(1, (os.cpu_count() or 1) // n_instances))


def start_local_cluster(n_instances: int, dashboard_address: str | None, silence_logs: int, security: Any) -> Any:
    """A ``LocalCluster`` of ``n_instances`` worker processes (one thread each: the engine runs its own)."""
    from distributed import LocalCluster

    _keep_worker_heaps()
    try:
        return LocalCluster(
            n_workers=n_instances,
            threads_per_worker=1,
            processes=True,
            dashboard_address=dashboard_address or ":0",  # None: any free port
            silence_logs=silence_logs,
            security=security,
        )
    except Exception as exc:
        raise _explain_start_failure(exc) from exc


def install_instances(
    client: Any, engine: EngineConfig, migration: MigrationConfig | None, *, local: bool,
    load_report_interval_s: float, engine_factory: Any = None,
) -> None:
    """Make every worker of ``client``'s cluster an engine instance; raises with the first worker's error."""
    from llumnix_dask.workers.plugin import InstanceWorkerPlugin, gpu_count_without_cuda_init

    plugin = InstanceWorkerPlugin(
        engine,
        migration,
        load_report_interval_s=load_report_interval_s,
        # Local workers share this machine's GPUs; remote ones count their own.
        gpu_count=(None if not local else gpu_count_without_cuda_init() if engine.device != "cpu" else 0),
        engine_factory=engine_factory,
    )
    results = client.register_plugin(plugin)
    failed = {w: r for w, r in (results or {}).items() if isinstance(r, dict) and r.get("status") == "error"}
    if failed:
        worker, res = next(iter(failed.items()))
        raise RuntimeError(f"engine instance failed to start on {worker}: {res.get('exception_text') or res}")


def workers_preloaded(client: Any) -> bool:
    """True if any worker was started with ``--preload llumnix_dask.preload.worker`` (its engine may still be
    building): then the plugin must not be installed a second time."""

    def has_preload(dask_worker: Any) -> bool:
        return any("llumnix_dask.preload.worker" in str(getattr(p, "name", "")) for p in dask_worker.preloads)

    try:
        return any(client.run(has_preload).values())
    except Exception:
        return False
