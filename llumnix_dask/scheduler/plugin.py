"""The global scheduler as a Dask SchedulerPlugin: its handlers, the migration loop and the scaling loop.

It answers the messages of :mod:`llumnix_dask.wire.scheduler_api` (the table there lists them, their senders
and replies); a load report arrives over each worker's batched stream, everything else is a call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

import msgspec

from llumnix_dask.config import PolicyConfig
from llumnix_dask.scheduler.core import GlobalScheduler, NoInstanceAvailable
from llumnix_dask.scheduler.records import PlannedMigration
from llumnix_dask.scheduler.metrics import register_with_dask, unregister_from_dask
from llumnix_dask.wire import call, handler, handlers
from llumnix_dask.wire import scheduler_api as api
from llumnix_dask.wire import worker_api as instance_api

logger = logging.getLogger(__name__)

PLUGIN_NAME = "llumnix-global-scheduler"
# A migration that takes longer than this is reported failed (the source side has its own timeouts).
MIGRATION_CALL_TIMEOUT_S = 120.0
# A cluster manager that has not asked for the scaling plan this long is taken to be absent.
UNMANAGED_AFTER_S = 30.0


class GlobalSchedulerPlugin(SchedulerPlugin):
    """Runs the Llumnix global scheduler inside the Dask scheduler.

    Example (what :class:`llumnix_dask.Cluster` does for you)::

        client.register_plugin(GlobalSchedulerPlugin(PolicyConfig(dispatch="llumnix")))
    """

    name = PLUGIN_NAME
    idempotent = True

    def __init__(self, policy: PolicyConfig | None = None) -> None:
        self.policy = policy or PolicyConfig()
        self.core: GlobalScheduler | None = None
        self.scheduler = None
        self._tasks: list[asyncio.Task] = []
        self._migration_tasks: set[asyncio.Task] = set()
        self._last_cluster_poll = -UNMANAGED_AFTER_S
        self._collector = None

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.core = GlobalScheduler(self.policy)
        scheduler.handlers.update(handlers(
            (api.ClaimInstanceId, self.claim_instance_id),
            (api.RegisterInstance, self.register_instance),
            (api.ReportLoads, self.report_loads),
            (api.DispatchBatch, self.dispatch_batch),
            (api.ReportFinished, self.request_finished),
            (api.AbortWhere, self.abort),
            (api.AskProgress, self.request_status),
            (api.ForceMigration, self.migrate),
            (api.GetPolicy, self.get_policy),
            (api.SetPolicy, self.set_policy),
            (api.GetInstances, self.instances),
            (api.GetScalingPlan, self.scaling_plan),
            (api.SetTarget, self.set_target),
            (api.Drain, self.drain),
            (api.GetSnapshot, self.snapshot),
            (api.Explain, self.explain),
            (api.GetMigrations, self.migrations),
        ))
        scheduler.stream_handlers[api.LoadReport.op] = handler(api.LoadReport, self.instance_load)
        self._collector = register_with_dask(lambda: self.core.snapshot(0, 0))
        self._tasks = [
            asyncio.create_task(self._migration_loop(), name="llumnix-migration-loop"),
            asyncio.create_task(self._scaling_loop(), name="llumnix-scaling-loop"),
        ]

    async def close(self) -> None:
        unregister_from_dask(self._collector)
        self._collector = None
        for task in self._tasks + list(self._migration_tasks):
            task.cancel()
        for task in self._tasks + list(self._migration_tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def valid_workers_downscaling(self, scheduler: Any, workers: list) -> list:
        """Dask's downscaling (``Adaptive``, ``workers_to_close``) may close a worker whose instance drained
        (terminating, nothing left on it), or a worker that hosts no instance; never one still serving."""
        if self.core is None:
            return workers
        drained = {r.address for r in self.core.drained()}
        serving = {r.address for r in self.core.instances.values()} - drained
        return [ws for ws in workers if ws.address not in serving]

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        rec = self.core.by_address(worker) if self.core else None
        if rec is not None:
            self.core.unregister(rec.instance_id, reason=f"worker {worker} left the cluster")

    # -- instance side -------------------------------------------------------------------------------
    def claim_instance_id(self, msg: api.ClaimInstanceId) -> str:
        return self.core.claim_instance_id(msg.base)

    def register_instance(self, msg: api.RegisterInstance) -> api.Registered:
        self.core.register(msg.instance_id, msg.address, msg.load, name=msg.name,
                           info=msgspec.structs.asdict(msg.info))
        return api.Registered(policy=self.core.policy)

    def report_loads(self, msg: api.ReportLoads) -> None:
        """Load reports by rpc (instances that are not Dask workers of this scheduler: benchmarks, sims)."""
        for load in msg.loads:
            self.core.update_load(load)

    def instance_load(self, msg: api.LoadReport) -> None:
        self.core.update_load(msg.load)

    # -- frontend side -------------------------------------------------------------------------------
    def place(self, demand: api.RequestDemand) -> api.Placement:
        start = time.perf_counter()
        core = self.core
        req = core.request_load(demand.request_id, demand.num_prompt_tokens, demand.priority,
                                demand.arrival_time or time.time())
        admission = core.admit(req)
        if not admission.admitted:
            return api.Placement(status="overloaded", error=admission.reason, retry_after_s=admission.retry_after_s)
        try:
            rec = core.dispatch(req)
        except NoInstanceAvailable as exc:
            return api.Placement(status="error", error=str(exc))
        return api.Placement(instance_id=rec.instance_id, address=rec.address,
                             decision_s=time.perf_counter() - start)

    def dispatch_batch(self, msg: api.DispatchBatch) -> list[api.Placement]:
        """Every dispatch a frontend has pending, in one round trip."""
        return [self.place(demand) for demand in msg.requests]

    def request_finished(self, msg: api.ReportFinished) -> None:
        for item in msg.items:
            self.core.request_finished(item)

    def explain(self, msg: api.Explain) -> list[dict]:
        return self.core.explain(msg.n, msg.kind)

    def snapshot(self, msg: api.GetSnapshot) -> dict:
        return self.core.snapshot(msg.n_migrations, msg.n_decisions)

    def instances(self, msg: api.GetInstances) -> list[api.InstanceRow]:
        return self.core.instance_rows()

    def migrations(self, msg: api.GetMigrations) -> list[dict]:
        log = list(self.core.migration_log)
        return log if msg.n is None else log[-msg.n:]

    def get_policy(self, msg: api.GetPolicy) -> PolicyConfig:
        return self.core.policy

    def set_policy(self, msg: api.SetPolicy) -> api.PolicyReply:
        try:
            policy = self.core.set_policy(dict(msg.updates))
        except (ValueError, TypeError) as exc:
            return api.PolicyReply(status="error", error=str(exc))
        return api.PolicyReply(policy=policy)

    async def migrate(self, msg: api.ForceMigration) -> instance_api.MigrationReport:
        """Force a migration of ``msg.request_id`` now (tests, demos)."""
        core, request_id, dst = self.core, msg.request_id, msg.dst
        src_id = core.request_locations.get(request_id)
        if src_id is None or src_id not in core.instances:
            return instance_api.MigrationReport(
                request_id=request_id, reason=f"request {request_id!r} is not known to be running anywhere")
        src = core.instances[src_id]
        dst_rec = core.instances.get(dst) if dst else core.pick_destination(exclude=src_id)
        if dst_rec is None or dst_rec.instance_id == src_id:
            return instance_api.MigrationReport(
                request_id=request_id, reason=f"no destination instance for {request_id!r} (dst={dst!r})")
        if src.migrating or dst_rec.migrating:
            # Wait for the running migration on either side to finish; one at a time per instance.
            deadline = time.monotonic() + 30
            while (src.migrating or dst_rec.migrating) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        plan = PlannedMigration(src, dst_rec, request_id, "forced by the user")
        return await self._run_migration(plan)

    async def abort(self, msg: api.AbortWhere) -> api.AbortResult:
        """Forward an abort to the instance that holds the request now (it may have migrated)."""
        core, request_id = self.core, msg.request_id
        if msg.instance_id is not None:
            if msg.survivor in core.instances and core.request_locations.get(request_id) == msg.instance_id:
                core.request_locations[request_id] = msg.survivor
            iid = msg.instance_id
        else:
            iid = core.request_locations.pop(request_id, None)
        rec = core.instances.get(iid) if iid else None
        if rec is None:
            return api.AbortResult(found=False)
        try:
            await call(self.scheduler.rpc(rec.address), instance_api.AbortRequest(request_id=request_id))
        except Exception as exc:
            return api.AbortResult(status="error", error=str(exc))
        return api.AbortResult(found=True)

    async def request_status(self, msg: api.AskProgress) -> list[api.Progress]:
        """Where each request stands, asked of the instance that holds it (see :class:`api.Progress`).

        A frontend asks for requests that stalled, whose instance's stream closed, or that wait for a token
        message that never came. One call per instance, whatever the number of requests.
        """
        queries = msg.requests
        by_instance: dict[str, list[int]] = {}
        replies = [api.Progress(status="unknown") for _ in queries]
        for k, query in enumerate(queries):
            iid = self.core.request_locations.get(query.request_id)
            if iid in self.core.instances:
                by_instance.setdefault(iid, []).append(k)

        async def ask(iid: str, ks: list[int]) -> None:
            try:
                got = await call(self.scheduler.rpc(self.core.instances[iid].address),
                                 instance_api.RequestTokens(requests=[queries[k] for k in ks]),
                                 reply=list[api.Progress])
            except Exception as exc:
                got = [api.Progress(status="error", error=f"{type(exc).__name__}: {exc}")] * len(ks)
            for k, reply in zip(ks, got):
                replies[k] = reply

        await asyncio.gather(*(ask(iid, ks) for iid, ks in by_instance.items()))
        return replies

    def drain(self, msg: api.Drain) -> api.Drained:
        try:
            ids = list(msg.instance_ids) or self.core.choose_to_drain(msg.count)
            for iid in ids:
                self.core.drain(iid, "drain requested by the cluster manager")
        except (KeyError, ValueError) as exc:
            return api.Drained(status="error", error=str(exc.args[0] if exc.args else exc))
        return api.Drained(instance_ids=ids)

    def scaling_plan(self, msg: api.GetScalingPlan) -> api.ScalingPlan:
        self._last_cluster_poll = time.monotonic()
        core = self.core
        return api.ScalingPlan(
            target=core.target_instances,
            active=sum(1 for r in core.instances.values() if not r.terminating),
            total=len(core.instances),
            retire=[api.Retiree(instance_id=r.instance_id, address=r.address, name=r.name) for r in core.drained()],
        )

    def set_target(self, msg: api.SetTarget) -> api.Ack:
        self.core.target_instances = msg.n
        return api.Ack()

    # -- loops ---------------------------------------------------------------------------------------
    async def _migration_loop(self) -> None:
        while True:
            await asyncio.sleep(self.core.policy.migration_interval_s)
            try:
                for plan in self.core.plan_migrations():
                    self.core.migration_started(plan)
                    task = asyncio.create_task(self._run_migration(plan, started=True))
                    self._migration_tasks.add(task)
                    task.add_done_callback(self._migration_tasks.discard)
            except Exception:  # a policy bug must not stop the loop
                logger.exception("llumnix migration tick failed")

    async def _run_migration(self, plan: PlannedMigration, started: bool = False) -> instance_api.MigrationReport:
        core = self.core
        if not started:
            core.migration_started(plan)
        order = instance_api.MigrateOut(
            request_id=plan.request_id, dst_address=plan.dst.address, dst_instance_id=plan.dst.instance_id,
            dst_load=plan.dst.load, reason=plan.reason, policy=core.policy,
        )
        try:
            result = await asyncio.wait_for(
                call(self.scheduler.rpc(plan.src.address), order, reply=instance_api.MigrationReport),
                MIGRATION_CALL_TIMEOUT_S,
            )
        except Exception as exc:  # worker died, timeout, comm error
            result = instance_api.MigrationReport(request_id=plan.request_id, reason=f"{type(exc).__name__}: {exc}")
        core.migration_finished(
            plan.src.instance_id,
            plan.dst.instance_id,
            result.request_id or plan.request_id,
            result.ok,
            f"{plan.reason}; {result.reason}".strip("; "),
            result.details(),
        )
        return result

    async def _scaling_loop(self) -> None:
        while True:
            await asyncio.sleep(self.core.policy.scaling_interval_s)
            try:
                self.core.scaling_tick()
                await self._retire_unmanaged()
            except Exception:
                logger.exception("llumnix scaling tick failed")

    async def _retire_unmanaged(self) -> None:
        """With no cluster manager polling the plan (``dask scheduler --preload``), retire drained workers
        here; a manager, when there is one, retires them itself (and stops their processes)."""
        if time.monotonic() - self._last_cluster_poll < UNMANAGED_AFTER_S:
            return
        drained = self.core.drained()
        if drained:
            await self.scheduler.retire_workers(workers=[r.address for r in drained], close_workers=True)


def snapshot_of(scheduler: Any, n_migrations: int = 50, n_decisions: int = 20) -> dict | None:
    """The snapshot of the global scheduler running in this Dask ``scheduler`` (see
    :func:`llumnix_dask.scheduler.views.snapshot`); None when the plugin is not installed. What in-process
    readers (the dashboard page) use instead of reaching into the plugin."""
    plugin = getattr(scheduler, "plugins", {}).get(PLUGIN_NAME)
    core = getattr(plugin, "core", None)
    return None if core is None else core.snapshot(n_migrations, n_decisions)
