"""InstanceWorkerPlugin: turns a Dask worker into one engine instance of the llumnix cluster.

On setup the plugin pins the worker to a GPU (one instance per GPU; CPU when there is none), builds the
engine in a thread, starts the :class:`~llumnix_dask.workers.llumlet.Llumlet` step loop, serves the messages
of :mod:`llumnix_dask.wire.worker_api` (add and abort requests, migrate one out, replay tokens) and registers
the instance with the global scheduler.

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

from llumnix_dask.config import EngineConfig, MigrationConfig, PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.request import Request
from llumnix_dask.wire import call, handlers, stream_message
from llumnix_dask.wire import scheduler_api as scheduler
from llumnix_dask.wire import worker_api as api
from llumnix_dask.workers.llumlet import Llumlet
from llumnix_dask.workers.streams import FrontendStreams

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
        self.streams: FrontendStreams | None = None
        self.instance_id: str | None = None
        self.device: str | None = None
        self.migration_available = False

    # -- lifecycle -----------------------------------------------------------------------------------
    async def setup(self, worker: Any) -> None:
        _leave_interrupts_to_the_parent()
        self.worker = worker
        self.instance_id = instance_id_for(worker)
        try:  # unique across restarts of this worker
            self.instance_id = await call(worker.scheduler, scheduler.ClaimInstanceId(base=self.instance_id), str)
        except Exception:  # a scheduler without the global scheduler plugin yet: keep the base id
            logger.debug("could not claim an instance id; using %s", self.instance_id)
        self.device = pin_gpu(worker.name, self.gpu_count)
        factory = self.engine_factory or default_engine_factory
        start = time.perf_counter()
        self.engine = await asyncio.to_thread(factory, self.engine_config, self.instance_id)
        build_s = time.perf_counter() - start
        loop = asyncio.get_running_loop()
        self.streams = FrontendStreams(connection_args=worker.connection_args)
        self.llumlet = Llumlet(
            self.engine,
            loop=loop,
            send_tokens=self.streams.send,
            report_load=self._report_load,
            load_report_interval_s=self.load_report_interval_s,
        )
        worker.handlers.update(handlers(
            (api.AddRequest, self.on_add_request),
            (api.AbortRequest, self.on_abort),
            (api.MigrateOut, self.on_migrate_out),
            (api.RequestTokens, self.on_request_tokens),
        ))
        self._register_migration_endpoints(worker)
        self.llumlet.start()
        info = scheduler.InstanceInfo(
            backend=self.engine_config.backend,
            model=self.engine_config.model or "built-in tiny model",
            device=f"cuda ({self.device})" if self.device else "cpu",
            block_size=getattr(self.engine, "block_size", self.engine_config.block_size),
            num_blocks=getattr(self.engine, "num_blocks", None),
            max_model_len=getattr(self.engine, "max_seq_len", None) or getattr(self.engine, "max_model_len", None),
            build_s=round(build_s, 3),
            migration=self.migration_available,
            migration_watermark_blocks=self.migration_config.dst_watermark_blocks,
        )
        await call(worker.scheduler, scheduler.RegisterInstance(
            instance_id=self.instance_id, address=worker.address, name=worker.name, load=self.llumlet.load(),
            info=info))
        logger.info("llumnix instance %s ready on %s (%s)", self.instance_id, worker.address, info.device)

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
        worker.batched_send(stream_message(scheduler.LoadReport(load=load)))

    # -- handlers ------------------------------------------------------------------------------------
    def on_add_request(self, msg: api.AddRequest) -> api.Added:
        if self.llumlet is None or not self.llumlet.alive:
            return api.Added(status="error", error=f"instance {self.instance_id} is not running")
        self.llumlet.add_request(msg.request, msg.frontend)
        return api.Added(instance_id=self.instance_id)

    def on_abort(self, msg: api.AbortRequest) -> api.Ack:
        if self.llumlet is not None:
            self.llumlet.abort(msg.request_id)
        return api.Ack()

    def on_request_tokens(self, msg: api.RequestTokens) -> list[api.Progress]:
        """For each query: the output tokens from ``start`` on that this instance has sent, or ``unknown``
        if it does not hold the request."""
        if self.llumlet is None:
            return [api.Progress(status="unknown") for _ in msg.requests]
        return [self.llumlet.replay(q.request_id, q.start) for q in msg.requests]

    async def on_migrate_out(self, msg: api.MigrateOut) -> api.MigrationReport:
        """Source side of one live migration, ordered by the global scheduler."""
        request_id = msg.request_id
        if not self.migration_available:
            return api.MigrationReport(request_id=request_id, reason="live migration is not available")
        if request_id is None:
            from llumnix_dask.policy.migration import select_request

            if msg.dst_load is None:
                return api.MigrationReport(reason="no destination load to choose a request")
            chosen = select_request(self.llumlet.load(), msg.dst_load, msg.policy or PolicyConfig(),
                                    self.migration_config.dst_watermark_blocks)
            if chosen is None:
                return api.MigrationReport(reason="no request to migrate")
            request_id = chosen.request_id
        from llumnix_dask.migration import DaskEndpoint, migrate_out

        endpoint = DaskEndpoint(msg.dst_address, rpc=self.worker.rpc, name=msg.dst_instance_id)
        self.llumlet.migrations_in_flight += 1
        start = time.perf_counter()
        try:
            result = await migrate_out(self.llumlet.migration_engine, request_id, endpoint, self.migration_config)
        except Exception as exc:
            logger.exception("migration of %s to %s failed", request_id, msg.dst_address)
            return api.MigrationReport(request_id=request_id, reason=f"{type(exc).__name__}: {exc}")
        finally:
            self.llumlet.migrations_in_flight -= 1
            self.llumlet.wake()
        if result.ok:
            self.llumlet.forget(request_id)
        return api.MigrationReport(
            ok=result.ok, request_id=result.request_id or request_id, reason=result.outcome,
            migration_id=result.migration_id, src=result.src, dst=result.dst, downtime_s=result.downtime_s,
            total_s=result.total_s, duration_s=time.perf_counter() - start, num_kv_tokens=result.num_kv_tokens,
            resume_index=result.resume_index, queued=result.queued, num_stages=len(result.stages),
            blocks=result.blocks, bytes=result.bytes, transport=result.transport,
        )


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
