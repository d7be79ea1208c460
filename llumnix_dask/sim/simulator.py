"""The discrete-event simulator: N SimEngines under the real global scheduler, in simulated time.

    >>> from llumnix_dask.sim_config import SimConfig
    >>> from llumnix_dask.workloads import generate_trace
    >>> result = simulate(SimConfig(num_instances=2), generate_trace("S-S", 50, rate=5.0, seed=1))
    >>> len(result.requests), bool(result.requests["finished"].all())
    (50, True)

One code path with the served cluster: dispatch, migration planning (pairs and the request to move),
scaling decisions and draining are made by :class:`~llumnix_dask.scheduler.core.GlobalScheduler` - the object
the Dask scheduler plugin wraps - with the simulated clock, and it is fed the way the plugin is: every engine
reports its load, with its request lists, after each step (and when it goes idle), so dispatch and migration
see each instance as of its last report plus the requests sent to it since. This module keeps only what
the Dask side does: the event loop, the engines' steps, the migrations
(:mod:`llumnix_dask.sim.migration`) and the cluster manager (start an instance ``instance_startup_s`` after
the scheduler raises its target, retire an instance once the scheduler reports it drained), plus metrics.

Events: request arrivals, engine step ends (each engine plans its next step when the previous one ends),
migration ticks (every ``migration_interval_s``), scaling ticks (every ``scaling_interval_s``), polls of the
cluster manager, instance starts, and samples of the cluster state.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from typing import Callable

import numpy as np

from llumnix_dask.sim_config import SimConfig
from llumnix_dask.engine.sim import SimEngine, SimSeq
from llumnix_dask.config import NON_MIGRATING_POLICIES
from llumnix_dask.request import Priority, Request, SamplingParams
from llumnix_dask.scheduler.core import GlobalScheduler
from llumnix_dask.wire.scheduler_api import FinishedRequest
from llumnix_dask.sim.metrics import SimResult, _plain, build_result
from llumnix_dask.sim.migration import MigrationModel
from llumnix_dask.workloads import Trace

_STEP, _ARRIVAL, _CALL = 0, 1, 2
# How often the simulated cluster manager carries out the scheduler's scaling plan (as Cluster.adapt's loop).
MANAGER_POLL_S = 0.5


class Simulator:
    """One run over one trace. Build it, call :meth:`run` once."""

    def __init__(self, config: SimConfig, trace: Trace, progress: bool = False) -> None:
        if len(trace) == 0:
            raise ValueError("trace: has no requests")
        self.config = config
        self.policy = config.policy
        self.trace = trace
        self.progress = progress
        self.now = 0.0
        self._events: list = []
        self._counter = itertools.count()
        self.scheduler = GlobalScheduler(config.policy, clock=self._clock)
        self.engines: dict[str, SimEngine] = {}
        self.starting: dict[str, float] = {}  # instance id -> when it will serve
        self._stepping: set[str] = set()
        self._next_instance = itertools.count()
        self.migrations = MigrationModel(config.latency, config.migration, self.scheduler, self._schedule_call,
                                         self._kick)
        n = len(trace)
        self._first = np.full(n, np.nan)
        self._finish = np.full(n, np.nan)
        self._preemptions = np.zeros(n, dtype=np.int64)
        self._loss = np.zeros(n)
        self._migrated = np.zeros(n, dtype=np.int64)
        self._instance = np.empty(n, dtype=object)
        self._finished = 0
        self._instances_area = 0.0
        self._last_count_change = 0.0
        self.samples: dict[str, list] = {"fragmentation": [], "util": [], "series": [], "queued": [0]}
        self.scaling_events: list[dict] = []
        self._bar = None
        max_len = config.max_request_tokens
        too_long = np.flatnonzero(trace.input_lens + trace.output_lens > max_len)
        if len(too_long):
            raise ValueError(f"trace: request {int(too_long[0])} needs more than an instance's {max_len} tokens "
                             f"of KV cache (blocks_per_instance less the admission watermark, x block_size)")

    def _clock(self) -> float:
        return self.now

    # -- event plumbing ----------------------------------------------------------------------------
    def _push(self, t: float, kind: int, payload) -> None:
        heapq.heappush(self._events, (t, next(self._counter), kind, payload))

    def _schedule_call(self, t: float, fn: Callable[[float], None]) -> None:
        self._push(t, _CALL, fn)

    def _more(self) -> bool:
        return self._finished < len(self.trace)

    def _kick(self, engine: SimEngine, now: float) -> None:
        """Start the engine's next step if it is idle and has work; an engine that stays idle reports its load
        (the llumlet reports when its instance goes idle)."""
        iid = engine.instance_id
        if iid in self._stepping or self.engines.get(iid) is not engine:
            return
        if engine.has_work():
            duration = engine.plan_step(now)
            if engine.step_planned:
                self._stepping.add(iid)
                self._push(now + duration, _STEP, engine)
                return
        self.scheduler.update_load(engine.load())

    def _count_change(self, now: float) -> None:
        self._instances_area += (len(self.engines) + len(self.starting)) * (now - self._last_count_change)
        self._last_count_change = now

    def _add_instance(self, iid: str, now: float) -> None:
        cfg = self.config
        engine = SimEngine(
            iid, cfg.blocks_per_instance, cfg.block_size, cfg.max_batch_size, cfg.max_batched_tokens, cfg.latency,
            realtime=False, record_tokens=False, watermark_blocks=self.config.watermark_blocks,
            priority_scheduling=self.policy.priorities_enabled, detailed_load=True,
        )
        engine.now = now
        self._count_change(now)
        self.engines[iid] = engine
        self.scheduler.register(iid, f"sim://{iid}", engine.load(), name=iid,
                                info={"backend": "sim", "block_size": cfg.block_size, "num_blocks": engine.num_blocks,
                                      "migration_watermark_blocks": cfg.migration.dst_watermark_blocks})

    # -- handlers ----------------------------------------------------------------------------------
    def _on_arrival(self, i: int, now: float) -> None:
        tr = self.trace
        high = bool(tr.high_priority[i])
        request = Request(
            request_id=f"r{i}",
            prompt_token_ids=[0] * int(tr.input_lens[i]),
            sampling=SamplingParams(max_tokens=int(tr.output_lens[i]), seed=i),
            priority=Priority.HIGH if high else Priority.NORMAL,
            arrival_time=now,
        )
        request.metadata["index"] = i
        gs = self.scheduler
        rec = gs.dispatch(gs.request_load(request.request_id, request.num_tokens, int(request.priority), now))
        engine = self.engines[rec.instance_id]
        engine.add_request(request)
        self._kick(engine, now)

    def _on_step_end(self, engine: SimEngine, now: float) -> None:
        self._stepping.discard(engine.instance_id)
        finished, _ = engine.finish_step(now)
        for seq in finished:
            self._record(seq, engine.instance_id)
        self.scheduler.update_load(engine.load())  # the llumlet's per-step load report
        self._kick(engine, now)

    def _record(self, seq: SimSeq, instance_id: str) -> None:
        r = seq.request
        i = r.metadata["index"]
        if not math.isnan(self._finish[i]):
            raise RuntimeError(f"request {r.request_id} finished twice")
        self._first[i] = r.first_token_time
        self._finish[i] = r.finish_time
        self._preemptions[i] = r.num_preemptions
        self._loss[i] = seq.preemption_loss_s
        self._migrated[i] = r.num_migrations
        self._instance[i] = instance_id
        self._finished += 1
        # The frontend tells the scheduler about every finished request.
        out = seq.generated
        self.scheduler.request_finished(FinishedRequest(
            r.request_id, int(r.priority), r.finish_time, r.first_token_time - r.arrival_time,
            (r.finish_time - r.first_token_time) / (out - 1) if out > 1 else None, r.finish_time - r.arrival_time,
            out, r.num_migrations, "length"))
        if self._bar is not None and self._finished % 100 == 0:
            self._bar.update(100)

    def _on_migration_tick(self, now: float) -> None:
        gs = self.scheduler
        for plan in gs.plan_migrations():
            src, dst = self.engines.get(plan.src.instance_id), self.engines.get(plan.dst.instance_id)
            gs.migration_started(plan)
            self.migrations.start(plan, src, dst, now)
        self._retire_drained(now)
        if self._more():
            self._schedule_call(now + self.policy.migration_interval_s, self._on_migration_tick)

    def _on_scaling_tick(self, now: float) -> None:
        decision = self.scheduler.scaling_tick()
        if decision is not None and decision.action in ("up", "down"):
            self.scaling_events.append({"time": now, "action": decision.action, "instance": decision.instance_id,
                                        **_plain(decision.reason)})
        if self._more():
            self._schedule_call(now + self.policy.scaling_interval_s, self._on_scaling_tick)

    def _on_manager_poll(self, now: float) -> None:
        """The cluster manager: retire drained instances, start new ones up to the scheduler's target."""
        self._retire_drained(now)
        gs = self.scheduler
        active = sum(1 for r in gs.instances.values() if not r.terminating)
        target = gs.target_instances
        if target is not None and target > active and not self.starting:
            for _ in range(target - active):
                iid = f"i{next(self._next_instance)}"
                self._count_change(now)
                self.starting[iid] = now + self.config.instance_startup_s
                self._schedule_call(self.starting[iid], lambda t, iid=iid: self._on_ready(iid, t))
                self.scaling_events.append({"time": now, "action": "start", "instance": iid})
        if self._more():
            self._schedule_call(now + MANAGER_POLL_S, self._on_manager_poll)

    def _on_ready(self, iid: str, now: float) -> None:
        self._count_change(now)
        del self.starting[iid]
        self._add_instance(iid, now)

    def _retire_drained(self, now: float) -> None:
        for rec in self.scheduler.drained():
            engine = self.engines.get(rec.instance_id)
            if engine is None or engine.has_work() or engine.queues.paused or rec.instance_id in self._stepping:
                continue  # its last report is older than a request that reached it since
            self._count_change(now)
            del self.engines[rec.instance_id]
            self.scheduler.unregister(rec.instance_id, "drained and retired")
            self.scaling_events.append({"time": now, "action": "removed", "instance": rec.instance_id})

    def _on_sample(self, now: float) -> None:
        fragmented = 0
        total = 0
        utils = []
        s = self.samples
        for e in self.engines.values():
            total += e.num_blocks
            q = e.queues
            free = len(q.free)
            utils.append(1.0 - free / e.num_blocks)
            if q.waiting:
                s["queued"][0] += 1
                if q.demand(q.waiting[0]) > free:
                    fragmented += free
        if total:
            s["fragmentation"].append(fragmented / total)
            s["util"] += utils
            s["series"].append((now, sum(utils) / len(utils), min(utils), max(utils)))
        if self._more():
            self._schedule_call(now + self.config.sample_interval_s, self._on_sample)

    # -- run ---------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        """Simulate until every request has finished; returns the measurements."""
        wall = time.perf_counter()
        for _ in range(self.config.num_instances):
            self._add_instance(f"i{next(self._next_instance)}", 0.0)
        for i, t in enumerate(self.trace.arrival_s):
            self._push(float(t), _ARRIVAL, i)
        pol = self.policy
        drains = pol.scaling_enabled
        if (pol.migration_enabled and pol.dispatch not in NON_MIGRATING_POLICIES) or drains:
            self._schedule_call(pol.migration_interval_s, self._on_migration_tick)
        if pol.scaling_enabled:
            self._schedule_call(pol.scaling_interval_s, self._on_scaling_tick)
            self._schedule_call(MANAGER_POLL_S, self._on_manager_poll)
        self._schedule_call(0.0, self._on_sample)
        if self.progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=len(self.trace), desc="simulating", unit="req")
        events = self._events
        pop = heapq.heappop
        try:
            while events:
                t, _, kind, payload = pop(events)
                self.now = t
                if kind == _STEP:
                    self._on_step_end(payload, t)
                elif kind == _ARRIVAL:
                    self._on_arrival(payload, t)
                else:
                    payload(t)
        finally:
            if self._bar is not None:
                self._bar.update(self._finished - self._bar.n)
                self._bar.close()
        if self._finished != len(self.trace):
            raise RuntimeError(f"simulation ended with {len(self.trace) - self._finished} unfinished requests")
        end = float(np.nanmax(self._finish))
        self._count_change(end)
        return build_result(self, end, time.perf_counter() - wall)


def simulate(config: SimConfig, trace: Trace, progress: bool = False) -> SimResult:
    """Run one simulation (see :class:`Simulator`)."""
    return Simulator(config, trace, progress).run()
