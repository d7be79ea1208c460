"""The global scheduler as a Dask SchedulerPlugin: handlers, the migration loop and the scaling loop.

Handlers it adds to the Dask scheduler (call them with ``client.scheduler.<name>(...)`` or any rpc):

=============================== ===========================================================================
``llumnix_claim_instance_id``   a unique instance id for a starting worker (a restarted one gets a new one)
``llumnix_register_instance``   a llumlet announces its engine (instance_id, address, name, load, info)
``llumnix_instance_load``       (stream handler) a llumlet's load report, over the worker's batched stream
``llumnix_dispatch``            pick an instance for a new request -> ``{status, instance_id, address}``
``llumnix_dispatch_batch``      several dispatches in one round trip -> a list of those replies
``llumnix_request_finished``    the frontend reports finished requests (TTFT/TPOT for the snapshot)
``llumnix_explain``             the last N decisions with their reasons
``llumnix_snapshot``            a plain dict for dashboards (see :meth:`GlobalScheduler.snapshot`)
``llumnix_instances``           one row per instance
``llumnix_migrations``          the migration log
``llumnix_get_policy``          the PolicyConfig as a dict
``llumnix_set_policy``          replace knobs (validated): dispatch, migration thresholds, headroom, band...
``llumnix_migrate``             force one request to migrate now (to ``dst`` or the freest instance)
``llumnix_drain``               mark instances terminating; migration empties them
``llumnix_scaling_plan``        what the cluster manager should do: target count and drained workers
``llumnix_set_target``          the wanted number of instances (``Cluster.scale``)
``llumnix_abort``                forward an abort to wherever the request lives now
``llumnix_report_loads``         load reports by rpc (instances outside this Dask cluster, benchmarks)
``llumnix_request_status``       where requests stand, asked of the instances holding them (frontend health)
=============================== ===========================================================================
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from llumnix_dask.config import PolicyConfig
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.scheduler.core import GlobalScheduler, NoInstanceAvailable, PlannedMigration
from llumnix_dask.scheduler.stats import FinishedRequest
from llumnix_dask.scheduler.wire import pack, unpack

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

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.core = GlobalScheduler(self.policy)
        handlers = {
            "llumnix_claim_instance_id": self.claim_instance_id,
            "llumnix_register_instance": self.register_instance,
            "llumnix_dispatch": self.dispatch,
            "llumnix_dispatch_batch": self.dispatch_batch,
            "llumnix_request_finished": self.request_finished,
            "llumnix_explain": self.explain,
            "llumnix_snapshot": self.snapshot,
            "llumnix_instances": self.instances,
            "llumnix_migrations": self.migrations,
            "llumnix_get_policy": self.get_policy,
            "llumnix_set_policy": self.set_policy,
            "llumnix_migrate": self.migrate,
            "llumnix_drain": self.drain,
            "llumnix_scaling_plan": self.scaling_plan,
            "llumnix_set_target": self.set_target,
            "llumnix_abort": self.abort,
            "llumnix_request_status": self.request_status,
            "llumnix_report_loads": self.report_loads,
        }
        scheduler.handlers.update(handlers)
        scheduler.stream_handlers["llumnix_instance_load"] = self.instance_load
        self._tasks = [
            asyncio.create_task(self._migration_loop(), name="llumnix-migration-loop"),
            asyncio.create_task(self._scaling_loop(), name="llumnix-scaling-loop"),
        ]

    async def close(self) -> None:
        for task in self._tasks + list(self._migration_tasks):
            task.cancel()
        for task in self._tasks + list(self._migration_tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        rec = self.core.by_address(worker) if self.core else None
        if rec is not None:
            self.core.unregister(rec.instance_id, reason=f"worker {worker} left the cluster")

    # -- instance side -------------------------------------------------------------------------------
    def claim_instance_id(self, base: str) -> str:
        return self.core.claim_instance_id(str(base))

    def register_instance(
        self, instance_id: str, address: str, load: InstanceLoad, name: Any = None, info: dict | None = None
    ) -> dict:
        self.core.register(instance_id, address, unpack(load), name=name, info=info)
        return {"status": "OK", "policy": dataclasses.asdict(self.core.policy)}

    def report_loads(self, loads: list[bytes]) -> None:
        """Load reports by rpc (instances that are not Dask workers of this scheduler: benchmarks, sims)."""
        for load in loads:
            self.core.update_load(unpack(load))

    def instance_load(self, load: bytes, worker: str | None = None, **_: Any) -> None:
        self.core.update_load(unpack(load))

    # -- frontend side -------------------------------------------------------------------------------
    def dispatch(
        self, request_id: str, num_prompt_tokens: int, priority: int = 0, arrival_time: float | None = None
    ) -> dict:
        start = time.perf_counter()
        req = self.core.request_load(request_id, int(num_prompt_tokens), int(priority), arrival_time or time.time())
        admission = self.core.admit(req)
        if not admission.admitted:
            return {"status": "overloaded", "error": admission.reason, "retry_after_s": admission.retry_after_s}
        try:
            rec = self.core.dispatch(req)
        except NoInstanceAvailable as exc:
            return {"status": "error", "error": str(exc)}
        return {
            "status": "OK",
            "instance_id": rec.instance_id,
            "address": rec.address,
            "decision_s": time.perf_counter() - start,
        }

    def dispatch_batch(self, requests: list[dict]) -> list[dict]:
        """Several dispatches in one round trip (the frontend batches concurrent requests)."""
        return [self.dispatch(**r) for r in requests]

    def request_finished(self, items: list[dict]) -> None:
        for item in items:
            self.core.request_finished(FinishedRequest(**item))

    def explain(self, n: int = 20, kind: str | None = None) -> list[dict]:
        return self.core.explain(int(n), kind)

    def snapshot(self, n_migrations: int = 50, n_decisions: int = 20) -> dict:
        return self.core.snapshot(int(n_migrations), int(n_decisions))

    def instances(self) -> list[dict]:
        return self.core.instance_rows()

    def migrations(self, n: int | None = None) -> list[dict]:
        log = list(self.core.migration_log)
        return log if n is None else log[-int(n) :]

    def get_policy(self) -> dict:
        return dataclasses.asdict(self.core.policy)

    def set_policy(self, updates: dict) -> dict:
        try:
            policy = self.core.set_policy(dict(updates))
        except (ValueError, TypeError) as exc:
            return {"status": "error", "error": str(exc)}
        return {"status": "OK", "policy": dataclasses.asdict(policy)}

    async def migrate(self, request_id: str, dst: str | None = None) -> dict:
        """Force a migration of ``request_id`` now (tests, demos). Returns the migration result."""
        core = self.core
        src_id = core.request_locations.get(request_id)
        if src_id is None or src_id not in core.instances:
            return {"ok": False, "reason": f"request {request_id!r} is not known to be running anywhere"}
        src = core.instances[src_id]
        dst_rec = core.instances.get(dst) if dst else core.pick_destination(exclude=src_id)
        if dst_rec is None or dst_rec.instance_id == src_id:
            return {"ok": False, "reason": f"no destination instance for {request_id!r} (dst={dst!r})"}
        if src.migrating or dst_rec.migrating:
            # Wait for the running migration on either side to finish; one at a time per instance.
            deadline = time.monotonic() + 30
            while (src.migrating or dst_rec.migrating) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        plan = PlannedMigration(src, dst_rec, request_id, "forced by the user")
        return await self._run_migration(plan)

    async def abort(self, request_id: str, instance_id: str | None = None, survivor: str | None = None) -> dict:
        """Forward an abort to the instance that holds the request now (it may have migrated).

        With ``instance_id``: stop only the copy on that instance (a duplicate the frontend found); the
        request lives on at ``survivor``.
        """
        if instance_id is not None:
            if survivor in self.core.instances and self.core.request_locations.get(request_id) == instance_id:
                self.core.request_locations[request_id] = survivor
            iid = instance_id
        else:
            iid = self.core.request_locations.pop(request_id, None)
        rec = self.core.instances.get(iid) if iid else None
        if rec is None:
            return {"status": "OK", "found": False}
        try:
            await self.scheduler.rpc(rec.address).llumnix_abort(request_id=request_id)
        except Exception as exc:
            return {"status": "error", "error": str(exc)}
        return {"status": "OK", "found": True}

    async def request_status(self, requests: list[dict]) -> list[dict]:
        """Where each request stands, asked of the instance that holds it: ``{"status": "OK", "ids": output
        tokens from ``start`` on that it has sent, "done": ...}``, ``{"status": "unknown"}`` when no instance
        holds it (its instance died, or never got it), or ``{"status": "error"}`` (instance unreachable).

        A frontend asks for requests that stalled, whose instance's stream closed, or that wait for a token
        message that never came. One call per instance, whatever the number of requests.
        """
        by_instance: dict[str, list[int]] = {}
        replies: list[dict] = [{"status": "unknown"} for _ in requests]
        for k, item in enumerate(requests):
            iid = self.core.request_locations.get(item["request_id"])
            if iid in self.core.instances:
                by_instance.setdefault(iid, []).append(k)

        async def ask(iid: str, ks: list[int]) -> None:
            try:
                got = await self.scheduler.rpc(self.core.instances[iid].address).llumnix_request_tokens(
                    requests=[requests[k] for k in ks])
            except Exception as exc:
                got = [{"status": "error", "error": f"{type(exc).__name__}: {exc}"}] * len(ks)
            for k, reply in zip(ks, got):
                replies[k] = reply

        await asyncio.gather(*(ask(iid, ks) for iid, ks in by_instance.items()))
        return replies

    def drain(self, instance_ids: list[str] | None = None, count: int | None = None) -> dict:
        try:
            ids = list(instance_ids or []) or self.core.choose_to_drain(int(count or 0))
            for iid in ids:
                self.core.drain(iid, "drain requested by the cluster manager")
        except (KeyError, ValueError) as exc:
            return {"status": "error", "error": str(exc.args[0] if exc.args else exc)}
        return {"status": "OK", "instance_ids": ids}

    def scaling_plan(self) -> dict:
        self._last_cluster_poll = time.monotonic()
        core = self.core
        return {
            "target": core.target_instances,
            "active": sum(1 for r in core.instances.values() if not r.terminating),
            "total": len(core.instances),
            "retire": [{"instance_id": r.instance_id, "address": r.address, "name": r.name} for r in core.drained()],
        }

    def set_target(self, n: int | None) -> dict:
        self.core.target_instances = None if n is None else int(n)
        return {"status": "OK"}

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

    async def _run_migration(self, plan: PlannedMigration, started: bool = False) -> dict:
        core = self.core
        if not started:
            core.migration_started(plan)
        try:
            result = await asyncio.wait_for(
                self.scheduler.rpc(plan.src.address).llumnix_migrate_out(
                    request_id=plan.request_id,
                    dst_address=plan.dst.address,
                    dst_instance_id=plan.dst.instance_id,
                    dst_load=pack(plan.dst.load),
                    reason=plan.reason,
                    policy=pack(core.policy),
                ),
                MIGRATION_CALL_TIMEOUT_S,
            )
        except Exception as exc:  # worker died, timeout, comm error
            result = {"ok": False, "request_id": plan.request_id, "reason": f"{type(exc).__name__}: {exc}"}
        details = {k: v for k, v in result.items() if k not in ("ok", "request_id", "reason")}
        core.migration_finished(
            plan.src.instance_id,
            plan.dst.instance_id,
            result.get("request_id", plan.request_id),
            bool(result.get("ok")),
            f"{plan.reason}; {result.get('reason', '')}".strip("; "),
            details,
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
