"""The global scheduler's state and decisions, without Dask.

:class:`GlobalScheduler` keeps the registry of instances and their latest :class:`InstanceLoad`, makes
dispatch / migration / scaling decisions with the pure policies, and records every decision with its
reason. The Dask :class:`~llumnix_dask.scheduler.plugin.GlobalSchedulerPlugin` wraps it with handlers and
loops; the unit tests drive it directly::

    >>> from llumnix_dask.policy.load import InstanceLoad, RequestLoad
    >>> gs = GlobalScheduler(PolicyConfig(), clock=lambda: 0.0)
    >>> gs.register("i0", "tcp://a:1", InstanceLoad("i0", total_blocks=100, used_blocks=0))
    >>> gs.register("i1", "tcp://b:1", InstanceLoad("i1", total_blocks=100, used_blocks=90))
    >>> gs.dispatch(RequestLoad("r1", blocks=2)).instance_id
    'i0'
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import time
from collections import deque
from typing import Any, Callable

from llumnix_dask.config import NON_MIGRATING_POLICIES, PolicyConfig, updated_policy
from llumnix_dask.policy import admission as admission_policy
from llumnix_dask.policy import dispatch as dispatch_policy
from llumnix_dask.policy import migration as migration_policy
from llumnix_dask.policy import scaling as scaling_policy
from llumnix_dask.policy.load import InstanceLoad, RequestLoad, freeness, with_dispatched
from llumnix_dask.request import Priority
from llumnix_dask.scheduler import views
from llumnix_dask.scheduler.records import Decision, InstanceRecord, PlannedMigration, describe
from llumnix_dask.scheduler.stats import CountHistory, LatencyWindow
from llumnix_dask.wire.scheduler_api import FinishedRequest

NoInstanceAvailable = dispatch_policy.NoInstanceAvailable


# How long a request sent to an instance counts there without showing up in its load reports (seconds).
PENDING_TTL_S = 1.0
# How long instances the scaling loop asked for count as starting (empty) ones before it gives up on them.
STARTUP_GRACE_S = 300.0

# Normal-priority freeness dispatch only ever picks among the freest instances, so the policy is run on a
# shortlist of this many (by cached freeness) instead of on every instance: same decision, less work.
DISPATCH_SHORTLIST = 8


class GlobalScheduler:
    """Registry + decisions. Not thread-safe: the plugin calls it from the scheduler's event loop only."""

    def __init__(
        self,
        policy: PolicyConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        log_size: int = 1000,
        migration_log_size: int = 1000,
    ) -> None:
        self.policy = policy or PolicyConfig()
        self.clock = clock
        self.instances: dict[str, InstanceRecord] = {}
        self._by_address: dict[str, str] = {}
        self._claims: dict[str, int] = {}  # instance ids handed out per base name
        self.dispatch_state = dispatch_policy.DispatchState(self.policy.random_seed)
        self.scaling_state = scaling_policy.ScalingState()
        self.decisions: deque[Decision] = deque(maxlen=log_size)
        self.migration_log: deque[dict] = deque(maxlen=migration_log_size)
        self.latency = LatencyWindow()
        self.instance_history = CountHistory()
        self.request_locations: dict[str, str] = {}  # request id -> instance id (dispatch / migration)
        self.target_instances: int | None = None  # wanted by the scaling loop or scale(n); None = no opinion
        self._scaled_up_at: float | None = None  # when the scaling loop last raised the target
        self.num_dispatched = 0
        self.num_migrations = 0
        self.num_migrations_failed = 0
        self.migrations_by_transport: dict[str, int] = {}  # committed migrations per path ("dask", "nccl", ...)

    # -- registry ------------------------------------------------------------------------------------
    def claim_instance_id(self, base: str) -> str:
        """A unique id for a starting instance: ``base`` the first time, ``base-r<k>`` when a worker of that
        name starts again (after a crash): requests and token streams of the dead one never mix with it."""
        k = self._claims.get(base, 0) + 1
        self._claims[base] = k
        return base if k == 1 else f"{base}-r{k}"

    def register(
        self, instance_id: str, address: str, load: InstanceLoad, *, name: Any = None, info: dict | None = None
    ) -> InstanceRecord:
        now = self.clock()
        rec = InstanceRecord(instance_id, address, load, registered_at=now, name=name, info=dict(info or {}))
        rec.report = load
        self._set_load(rec, load)
        rec.last_report = now
        self.instances[instance_id] = rec
        self._by_address[address] = instance_id
        self._log("register", f"instance at {address} joined", instance_id=instance_id)
        self.instance_history.record(now, len(self.instances))
        return rec

    def unregister(self, instance_id: str, reason: str = "worker left") -> InstanceRecord | None:
        rec = self.instances.pop(instance_id, None)
        if rec is None:
            return None
        self._by_address.pop(rec.address, None)
        self.dispatch_state.forget(instance_id)
        for rid in [r for r, i in self.request_locations.items() if i == instance_id]:
            del self.request_locations[rid]
        self._log("remove", reason, instance_id=instance_id)
        self.instance_history.record(self.clock(), len(self.instances))
        return rec

    def by_address(self, address: str) -> InstanceRecord | None:
        iid = self._by_address.get(address)
        return None if iid is None else self.instances.get(iid)

    def update_load(self, load: InstanceLoad) -> None:
        rec = self.instances.get(load.instance_id)
        if rec is None:
            return
        now = self.clock()
        rec.report = load  # a drain this report does not know of yet is kept by _refresh
        if rec.pending:
            if load.num_requests and not (load.running or load.waiting):
                # A summary report counts every request that reached the instance, but none still migrating in.
                for rid in [rid for rid in rec.pending if rid not in rec.incoming]:
                    del rec.pending[rid]
            else:
                seen = {r.request_id for r in load.running} | {r.request_id for r in load.waiting}
                for rid in [rid for rid in rec.pending if rid in seen]:
                    del rec.pending[rid]
        self._refresh(rec, now)
        rec.last_report = now

    def _refresh(self, rec: InstanceRecord, now: float) -> None:
        """``load`` = the latest report plus the requests sent since that it does not show. A report taken
        before they arrived would otherwise undo their accounting; they count until a report lists them, they
        finish, or PENDING_TTL_S passes (refused, or finished unseen)."""
        load = rec.report if rec.report is not None else rec.load
        for rid, (req, since) in list(rec.pending.items()):
            if now - since > PENDING_TTL_S:
                del rec.pending[rid]
            else:
                load = with_dispatched(load, req)
        if rec.terminating and not load.terminating:
            load = dataclasses.replace(load, terminating=True)
        self._set_load(rec, load)

    def expire_pending(self) -> None:
        """Drop pending requests past their TTL on instances that have not reported since (idle ones)."""
        now = self.clock()
        for rec in self.instances.values():
            if rec.pending and any(now - since > PENDING_TTL_S for _, since in rec.pending.values()):
                self._refresh(rec, now)

    def _count_sent(self, rec: InstanceRecord, request: RequestLoad) -> None:
        """A request is on its way to ``rec``: it counts there (pending) until a report shows it."""
        rec.pending[request.request_id] = (request, self.clock())
        self._set_load(rec, with_dispatched(rec.load, request))

    def _forget_pending(self, instance_id: str | None, request_id: str | None) -> None:
        rec = self.instances.get(instance_id) if instance_id else None
        if rec is not None and rec.pending.pop(request_id, None) is not None:
            self._refresh(rec, self.clock())

    def _set_load(self, rec: InstanceRecord, load: InstanceLoad) -> None:
        rec.load = load
        rec.freeness = freeness(load, self.policy)

    def loads(self) -> list[InstanceLoad]:
        return [rec.load for rec in self.instances.values()]

    # -- dispatch ------------------------------------------------------------------------------------
    def request_load(
        self, request_id: str, num_prompt_tokens: int, priority: int = 0, arrival_time: float = 0.0
    ) -> RequestLoad:
        """The demand of a new request in blocks of the instances' block size."""
        block_size = next((r.info.get("block_size") for r in self.instances.values() if r.info.get("block_size")), 16)
        return RequestLoad(
            request_id,
            blocks=max(1, -(-num_prompt_tokens // block_size)),
            priority=priority,
            num_tokens=num_prompt_tokens,
            arrival_time=arrival_time,
        )

    def admit(self, request: RequestLoad) -> admission_policy.Admission:
        """Admission control of a new request (a bounded global queue; see :mod:`llumnix_dask.policy.admission`)."""
        serving = [r for r in self.instances.values() if not r.terminating]
        queued = sum(r.load.num_waiting for r in serving)
        return admission_policy.admit(int(request.priority), queued, len(serving), self.policy,
                                      lambda: self.latency.finish_rate(self.clock()))

    def dispatch(self, request: RequestLoad) -> InstanceRecord:
        """Pick an instance for a new request; raises NoInstanceAvailable with a clear message."""
        if not self.instances:
            raise NoInstanceAvailable("no engine instance is registered yet; start workers with the llumnix plugin")
        decision = dispatch_policy.choose_instance(self._dispatch_candidates(request), request, self.policy, self.dispatch_state)
        rec = self.instances[decision.instance_id]
        self.dispatch_state.record(rec.instance_id)
        # Count the request on our copy at once, so a burst between two load reports spreads out (unless the
        # policy asks for the last reports alone, as the paper's global scheduler had them).
        if self.policy.count_unreported_dispatches:
            self._count_sent(rec, request)
        rec.dispatched += 1
        self.num_dispatched += 1
        self.request_locations[request.request_id] = rec.instance_id
        self._log("dispatch", decision.reason, request_id=request.request_id, instance_id=rec.instance_id)
        return rec

    def _dispatch_candidates(self, request: RequestLoad) -> list[InstanceLoad]:
        """The loads the dispatch policy needs to see for ``request``.

        For a normal request under freeness dispatch (llumnix / infaas) that is the few freest instances: the
        policy picks the freest non-busy instance, or the freest one when all are busy, and both are in the
        shortlist (ties keep registration order, as in the full list). Other policies and high-priority
        requests (chosen by their count of high-priority requests first) see every instance.
        """
        recs = self.instances.values()
        if (
            len(self.instances) > DISPATCH_SHORTLIST
            and self.policy.dispatch in ("llumnix", "infaas")
            and not (self.policy.priorities_enabled and request.priority >= Priority.HIGH)
        ):
            return [r.load for r in heapq.nlargest(DISPATCH_SHORTLIST, recs, key=lambda r: r.freeness)]
        return [r.load for r in recs]

    def request_finished(self, item: FinishedRequest) -> None:
        self._forget_pending(self.request_locations.pop(item.request_id, None), item.request_id)
        self.latency.add(item)

    # -- migration -----------------------------------------------------------------------------------
    def plan_migrations(self) -> list[PlannedMigration]:
        """Pairs for this migration tick. Draining instances migrate out even when migration is off, unless
        ``drain_by_migration`` is False (then they only finish what they hold)."""
        self.expire_pending()  # every tick, so an idle instance's stale pending requests lapse too
        if len(self.instances) < 2:
            return []
        idle = {iid for iid, rec in self.instances.items() if not rec.migrating}
        migrates = self.policy.migration_enabled and self.policy.dispatch not in NON_MIGRATING_POLICIES
        if migrates:
            pairs = migration_policy.pair_instances(self.loads(), self.policy)
        elif self.policy.drain_by_migration and any(r.terminating for r in self.instances.values()):
            # Draining needs migration even under a policy that never migrates for balance.
            drain_policy = dataclasses.replace(self.policy, migration_enabled=True, dispatch="llumnix")
            pairs = migration_policy.pair_instances(self.loads(), drain_policy)
            pairs = [p for p in pairs if self.instances[p.src].terminating]
        else:
            return []
        planned = []
        for pair in pairs:
            if pair.src not in idle or pair.dst not in idle:
                continue  # one migration at a time per instance
            src, dst = self.instances[pair.src], self.instances[pair.dst]
            if dst.terminating:
                continue
            chosen = None
            if src.load.running or src.load.waiting:
                reserve = int(dst.info.get("migration_watermark_blocks") or 0)
                req = migration_policy.select_request(src.load, dst.load, self.policy, reserve)
                if req is None:
                    continue
                chosen = req.request_id
                # Count it on the destination at once, as a dispatch does, so that requests dispatched
                # before the destination's next load report do not take the room it is moving into.
                self._count_sent(dst, req)
                dst.incoming.add(chosen)
            elif src.load.num_requests == 0:
                continue
            idle.discard(pair.src)
            idle.discard(pair.dst)
            planned.append(PlannedMigration(src, dst, chosen, describe(pair.reason)))
        return planned

    def migration_request_chosen(self, plan: PlannedMigration, request: RequestLoad) -> None:
        """The source picked ``request`` for a plan that named none (its load reports list no requests): it
        counts on the destination from now on, exactly as a request chosen while planning does."""
        self._count_sent(plan.dst, request)
        plan.dst.incoming.add(request.request_id)

    def migration_started(self, plan: PlannedMigration) -> None:
        plan.src.migrating = True
        plan.dst.migrating = True

    def migration_finished(
        self, src_id: str, dst_id: str, request_id: str | None, ok: bool, reason: str, details: dict | None = None
    ) -> None:
        for iid in (src_id, dst_id):
            if iid in self.instances:
                self.instances[iid].migrating = False
        if dst_id in self.instances:
            self.instances[dst_id].incoming.discard(request_id)
        if not ok:
            self._forget_pending(dst_id, request_id)  # it stays on the source
        entry = {
            "time": self.clock(),
            "request_id": request_id,
            "src": src_id,
            "dst": dst_id,
            "ok": bool(ok),
            "reason": reason,
        }
        entry.update(details or {})
        self.migration_log.append(entry)
        if ok:
            self.num_migrations += 1
            path = str((details or {}).get("transport") or "unknown")
            self.migrations_by_transport[path] = self.migrations_by_transport.get(path, 0) + 1
            if request_id is not None:
                self.request_locations[request_id] = dst_id
        else:
            self.num_migrations_failed += 1
        verdict = "done" if ok else "failed"
        self._log("migration", f"{verdict}: {reason}", request_id=request_id, instance_id=src_id, target_id=dst_id)

    def pick_destination(self, exclude: str) -> InstanceRecord | None:
        """The freest other instance that is not draining (forced migrations with no dst)."""
        best, best_f = None, -math.inf
        for rec in self.instances.values():
            if rec.instance_id == exclude or rec.terminating:
                continue
            f = freeness(rec.load, self.policy)
            if f > best_f:
                best, best_f = rec, f
        return best

    # -- scaling and draining ------------------------------------------------------------------------
    def drain(self, instance_id: str, reason: str) -> InstanceRecord:
        rec = self.instances.get(instance_id)
        if rec is None:
            raise KeyError(f"unknown instance {instance_id!r}; known: {', '.join(sorted(self.instances)) or 'none'}")
        if not rec.terminating:
            rec.terminating = True
            self._refresh(rec, self.clock())
            self._log("drain", reason, instance_id=instance_id)
        return rec

    def cancel_drain(self, instance_id: str, reason: str) -> None:
        """Take a draining instance back into service (it serves and receives requests again)."""
        rec = self.instances[instance_id]
        if rec.terminating:
            rec.terminating = False
            rec.load = dataclasses.replace(rec.load, terminating=False)
            if rec.report is not None:
                rec.report = dataclasses.replace(rec.report, terminating=False)
            self._refresh(rec, self.clock())
            self._log("drain", f"drain cancelled: {reason}", instance_id=instance_id)

    def choose_to_drain(self, count: int) -> list[str]:
        """The ``count`` active instances that are cheapest to empty (fewest requests, then freest)."""
        active = [r for r in self.instances.values() if not r.terminating]
        if count > len(active) - 1:
            raise ValueError(f"cannot drain {count} of {len(active)} active instances: at least one must stay")
        active.sort(key=lambda r: (r.load.num_requests, -freeness(r.load, self.policy), r.registered_at))
        return [r.instance_id for r in active[:count]]

    def drained(self) -> list[InstanceRecord]:
        """Draining instances that hold no request any more: safe to retire."""
        return [
            r for r in self.instances.values() if r.terminating and r.load.num_requests == 0 and not r.migrating
        ]

    def scaling_tick(self) -> Any:
        """Run the scaling policy once; an "up" raises the target count, a "down" starts a drain."""
        if not self.policy.scaling_enabled:
            return None
        now = self.clock()
        loads = [r.load for r in self.instances.values()]
        active = sum(1 for r in self.instances.values() if not r.terminating)
        # Instances asked for but not serving yet count as empty ones (what the cluster will soon be), so a
        # surge is not answered twice while they start - for STARTUP_GRACE_S at most: a cluster manager that
        # could not start them must not keep the cluster from scaling down for good.
        starting = max(0, (self.target_instances or 0) - active)
        if starting and self._scaled_up_at is not None and now - self._scaled_up_at > STARTUP_GRACE_S:
            self._log("scaling", f"{starting} instance(s) asked for {now - self._scaled_up_at:.0f} s ago never "
                                 f"came; target back to the {active} serving")
            self.target_instances, starting = active, 0
        decision = scaling_policy.scaling_decision(loads, self.policy, now, self.scaling_state, starting)
        if decision.action == "up":
            count = max(1, decision.count)
            # A drain still under way is the cheapest instance to have back: it is serving already, and
            # keeping it saves both the start of a new one and the rest of the drain. Only instances still
            # holding requests are taken back (an empty one may already be on its way out).
            for rec in sorted((r for r in self.instances.values() if r.terminating and r.load.num_requests),
                              key=lambda r: -r.load.num_requests)[:count]:
                self.cancel_drain(rec.instance_id, f"scale up: {decision.reason}")
                count -= 1
                active += 1
            wanted = active + starting + count
            self.target_instances = min(self.policy.max_instances, max(self.target_instances or 0, wanted))
            self._scaled_up_at = now
            self._log("scaling", f"scale up to {self.target_instances}: {decision.reason}")
        elif decision.action == "down" and decision.instance_id in self.instances:
            self.target_instances = max(self.policy.min_instances, active - 1)
            self.drain(decision.instance_id, f"scale down: {decision.reason}")
        return decision

    # -- knobs ---------------------------------------------------------------------------------------
    def set_policy(self, updates: dict[str, Any]) -> PolicyConfig:
        new = updated_policy(self.policy, updates)
        if new.dispatch != self.policy.dispatch:
            self.dispatch_state = dispatch_policy.DispatchState(new.random_seed)
        self.policy = new
        for rec in self.instances.values():
            self._set_load(rec, rec.load)
        self._log("policy", "knobs changed: " + ", ".join(f"{k}={v!r}" for k, v in sorted(updates.items())))
        return new

    # -- reading -------------------------------------------------------------------------------------
    def explain(self, n: int = 20, kind: str | None = None) -> list[dict]:
        items = [d for d in self.decisions if kind is None or d.kind == kind]
        return [d.as_dict() for d in items[-n:]]

    def instance_rows(self) -> list[dict]:
        """One plain-dict row per instance (see :func:`llumnix_dask.scheduler.views.instance_rows`)."""
        return views.instance_rows(self)

    def snapshot(self, n_migrations: int = 50, n_decisions: int = 20) -> dict:
        """Everything a dashboard needs (see :func:`llumnix_dask.scheduler.views.snapshot`)."""
        return views.snapshot(self, n_migrations, n_decisions)

    def _log(self, kind: str, reason: str, **kw: Any) -> None:
        self.decisions.append(Decision(self.clock(), kind, reason, **kw))
