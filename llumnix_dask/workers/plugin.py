"""InstanceWorkerPlugin: turns a Dask worker into one engine instance of the llumnix cluster.

On setup the plugin pins the worker to a GPU (one instance per GPU; CPU when there is none), builds the
engine in a thread, starts the :class:`~llumnix_dask.workers.llumlet.Llumlet` step loop, adds the worker
handlers below and registers the instance with the global scheduler.

================================ ===========================================================================
``llumnix_add_request``          queue a Request; its tokens stream to the ``frontend`` address
``llumnix_abort``                abort a request (client went away)
``llumnix_migrate_out``          (from the global scheduler) migrate one request to another instance
``llumnix_engine_load``          the engine's current InstanceLoad
``llumnix_request_tokens``       output tokens of requests from an index on (a frontend's health check)
================================ ===========================================================================

plus the live-migration endpoints of :mod:`llumnix_dask.migration` (destination side).

``dask worker --preload llumnix_dask.preload.worker SCHEDULER`` installs it with the engine from Dask config
``llumnix.engine`` (EngineConfig fields).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol import to_serialize

from llumnix_dask.config import EngineConfig, MigrationConfig, PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.request import Request
from llumnix_dask.scheduler.wire import pack, unpack
from llumnix_dask.workers.llumlet import Llumlet
from llumnix_dask.workers.streams import TokenStreams

logger = logging.getLogger(__name__)

PLUGIN_NAME = "llumnix-instance"
EngineFactory = Callable[[EngineConfig, str], Any]


def default_engine_factory(config: EngineConfig, instance_id: str) -> Any:
    from llumnix_dask.engine import create_engine

    return create_engine(config, instance_id)


def instance_id_for(worker: Any) -> str:
    """``instance-<worker name>``; a worker named by its address (``dask worker`` CLI) -> ``instance-host:port``."""
    name = str(worker.name)
    return f"instance-{name.split('://', 1)[-1]}"


def gpu_count_without_cuda_init() -> int:
    """GPUs on this machine, counted through NVML / nvidia-smi: initialising CUDA here would freeze
    CUDA_VISIBLE_DEVICES before the worker is pinned."""
    try:
        import torch

        n = torch.cuda._device_count_nvml()  # NVML only, no CUDA context
        if n >= 0:
            return n
    except Exception:
        pass
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except Exception:
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def pin_gpu(worker_name: Any, gpu_count: int | None) -> str | None:
    """One instance per GPU: set CUDA_VISIBLE_DEVICES for this worker process (before CUDA starts).

    Returns the visible device, or None for CPU. A CUDA_VISIBLE_DEVICES already set with a single device
    is respected (the operator pinned the worker).
    """
    current = os.environ.get("CUDA_VISIBLE_DEVICES")
    if current is not None and "," not in current:
        return current or None
    if gpu_count is None:
        gpu_count = gpu_count_without_cuda_init()
    if not gpu_count:
        return None
    devices = current.split(",") if current else [str(i) for i in range(gpu_count)]
    try:
        ordinal = int(worker_name)
    except (TypeError, ValueError):
        ordinal = sum(map(ord, str(worker_name)))
    device = devices[ordinal % len(devices)]
    os.environ["CUDA_VISIBLE_DEVICES"] = device
    return device


class _TrackedEngine:
    """The engine as the migration destination sees it: adopting a request also continues its stream."""

    def __init__(self, engine: Any, llumlet: Llumlet) -> None:
        self._engine = engine
        self._llumlet = llumlet

    def commit_migrated(self, state: Any, block_ids: Any) -> None:
        self._llumlet.adopt_migrated(state)
        try:
            self._engine.commit_migrated(state, block_ids)
        except Exception:
            self._llumlet.forget(state.request.request_id)
            raise
        self._llumlet.wake()

    def add_request(self, request: Request) -> None:
        # A queued request moved here before it started: it streams from index len(output) on.
        self._llumlet.adopt_request(request)
        self._engine.add_request(request)
        self._llumlet.wake()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)


class InstanceWorkerPlugin(WorkerPlugin):
    """Hosts one engine instance and its llumlet on every worker it is registered on.

    Example (what :class:`llumnix_dask.Cluster` does)::

        client.register_plugin(InstanceWorkerPlugin(EngineConfig(backend="nano")))
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(
        self,
        engine: EngineConfig | None = None,
        migration: MigrationConfig | None = None,
        *,
        load_report_interval_s: float = 0.01,
        gpu_count: int | None = None,
        engine_factory: EngineFactory | None = None,
    ) -> None:
        self.engine_config = engine or EngineConfig()
        self.migration_config = migration or MigrationConfig()
        self.load_report_interval_s = load_report_interval_s
        self.gpu_count = gpu_count
        self.engine_factory = engine_factory
        self.worker = None
        self.engine = None
        self.llumlet: Llumlet | None = None
        self.streams: TokenStreams | None = None
        self.instance_id: str | None = None
        self.device: str | None = None
        self.migration_available = False

    # -- lifecycle -----------------------------------------------------------------------------------
    async def setup(self, worker: Any) -> None:
        _leave_interrupts_to_the_parent()
        self.worker = worker
        self.instance_id = instance_id_for(worker)
        try:  # unique across restarts of this worker
            self.instance_id = await worker.scheduler.llumnix_claim_instance_id(base=self.instance_id)
        except Exception:  # a scheduler without the global scheduler plugin yet: keep the base id
            logger.debug("could not claim an instance id; using %s", self.instance_id)
        self.device = pin_gpu(worker.name, self.gpu_count)
        factory = self.engine_factory or default_engine_factory
        start = time.perf_counter()
        self.engine = await asyncio.to_thread(factory, self.engine_config, self.instance_id)
        build_s = time.perf_counter() - start
        loop = asyncio.get_running_loop()
        self.streams = TokenStreams(connection_args=worker.connection_args)
        self.llumlet = Llumlet(
            self.engine,
            loop=loop,
            send_tokens=self.streams.send,
            report_load=self._report_load,
            load_report_interval_s=self.load_report_interval_s,
        )
        worker.handlers.update(
            {
                "llumnix_add_request": self.add_request,
                "llumnix_abort": self.abort,
                "llumnix_migrate_out": self.migrate_out,
                "llumnix_engine_load": self.engine_load,
                "llumnix_request_tokens": self.request_tokens,
            }
        )
        self._register_migration_endpoints(worker)
        self.llumlet.start()
        info = {
            "backend": self.engine_config.backend,
            "model": self.engine_config.model or "built-in tiny model",
            "device": f"cuda ({self.device})" if self.device else "cpu",
            "block_size": getattr(self.engine, "block_size", self.engine_config.block_size),
            "num_blocks": getattr(self.engine, "num_blocks", None),
            # The longest prompt + output this engine serves: frontends refuse longer requests up front.
            "max_model_len": getattr(self.engine, "max_seq_len", None) or getattr(self.engine, "max_model_len", None),
            "build_s": round(build_s, 3),
            "migration": self.migration_available,
            # Free blocks this instance keeps when it takes a migrating request: the scheduler plans by it.
            "migration_watermark_blocks": self.migration_config.dst_watermark_blocks,
        }
        await worker.scheduler.llumnix_register_instance(
            instance_id=self.instance_id,
            address=worker.address,
            name=worker.name,
            load=pack(self.llumlet.load()),
            info=info,
        )
        logger.info("llumnix instance %s ready on %s (%s)", self.instance_id, worker.address, info["device"])

    async def teardown(self, worker: Any) -> None:
        if self.migration_available:
            from llumnix_dask.migration import unregister_migration_handlers

            unregister_migration_handlers(worker)
        if self.llumlet is not None:
            await asyncio.to_thread(self.llumlet.stop)
        if self.streams is not None:
            await self.streams.close()
        close = getattr(self.engine, "close", None)  # engines holding outside resources (vLLM) free them
        if close is not None:
            await asyncio.to_thread(close)

    def _register_migration_endpoints(self, worker: Any) -> None:
        try:
            from llumnix_dask.migration import register_migration_handlers
        except ImportError:
            logger.info("live migration is not available: llumnix_dask.migration has no handlers yet")
            return
        destination = _make_destination(_TrackedEngine(self.engine, self.llumlet), self.migration_config)
        register_migration_handlers(worker, destination)
        self.migration_available = True

    def _report_load(self, load: InstanceLoad) -> None:
        worker = self.worker
        if worker is None or worker.batched_stream is None:
            return
        worker.batched_send({"op": "llumnix_instance_load", "load": pack(load)})

    # -- handlers ------------------------------------------------------------------------------------
    def add_request(self, request: Request, frontend: str | None = None) -> dict:
        if self.llumlet is None or not self.llumlet.alive:
            return {"status": "error", "error": f"instance {self.instance_id} is not running"}
        self.llumlet.add_request(request, frontend)
        return {"status": "OK", "instance_id": self.instance_id}

    def abort(self, request_id: str) -> dict:
        if self.llumlet is not None:
            self.llumlet.abort(request_id)
        return {"status": "OK"}

    def engine_load(self) -> InstanceLoad:
        return to_serialize(self.llumlet.load())

    def request_tokens(self, requests: list[dict]) -> list[dict]:
        """For each ``{"request_id", "start"}``: the output tokens from ``start`` on that this instance has
        sent, or ``{"status": "unknown"}`` if it does not hold the request."""
        if self.llumlet is None:
            return [{"status": "unknown"} for _ in requests]
        return [{**self.llumlet.replay(r["request_id"], int(r.get("start", 0))), "instance_id": self.instance_id}
                for r in requests]

    async def migrate_out(
        self,
        request_id: str | None = None,
        dst_address: str | None = None,
        dst_instance_id: str | None = None,
        dst_load: InstanceLoad | None = None,
        reason: str = "",
        policy: PolicyConfig | None = None,
    ) -> dict:
        """Source side of one live migration, ordered by the global scheduler."""
        if not self.migration_available:
            return {"ok": False, "request_id": request_id, "reason": "live migration is not available"}
        if request_id is None:
            from llumnix_dask.policy.migration import select_request

            if dst_load is None:
                return {"ok": False, "request_id": None, "reason": "no destination load to choose a request"}
            chosen = select_request(self.llumlet.load(), unpack(dst_load), unpack(policy) or PolicyConfig(),
                                    self.migration_config.dst_watermark_blocks)
            if chosen is None:
                return {"ok": False, "request_id": None, "reason": "no request to migrate"}
            request_id = chosen.request_id
        from llumnix_dask.migration import DaskEndpoint, migrate_out

        endpoint = DaskEndpoint(dst_address, rpc=self.worker.rpc, name=dst_instance_id)
        self.llumlet.migrations_in_flight += 1
        start = time.perf_counter()
        try:
            result = await migrate_out(
                self.llumlet.migration_engine, request_id, endpoint, self.migration_config
            )
        except Exception as exc:
            logger.exception("migration of %s to %s failed", request_id, dst_address)
            return {"ok": False, "request_id": request_id, "reason": f"{type(exc).__name__}: {exc}"}
        finally:
            self.llumlet.migrations_in_flight -= 1
            self.llumlet.wake()
        out = _result_dict(result)
        out.setdefault("request_id", request_id)
        out.setdefault("duration_s", time.perf_counter() - start)
        if out.get("ok"):
            self.llumlet.forget(request_id)
        return out


def _leave_interrupts_to_the_parent() -> None:
    """Ctrl-C in a terminal reaches every process of the group; the process that owns the cluster closes its
    workers in order, so a worker process does not die of it on its own (with a traceback each)."""
    import multiprocessing
    import signal
    import threading

    if multiprocessing.parent_process() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _make_destination(engine: Any, config: MigrationConfig) -> Any:
    from llumnix_dask.migration import MigrationDestination

    return MigrationDestination(engine, config)


def _result_dict(result: Any) -> dict:
    """MigrationResult -> a plain dict for the scheduler's migration log (scalars + stage count)."""
    out = {
        k: v for k, v in result.to_dict().items() if isinstance(v, (str, int, float, bool, type(None)))
    }
    out["reason"] = result.outcome
    out["num_stages"] = len(result.stages)
    out["blocks"] = result.blocks
    out["bytes"] = result.bytes
    return out
