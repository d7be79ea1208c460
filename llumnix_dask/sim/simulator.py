"""The discrete-event simulator: N SimEngines driven by the same policy functions as the real cluster.

    >>> from llumnix_dask.config import SimConfig
    >>> from llumnix_dask.workloads import generate_trace
    >>> result = simulate(SimConfig(num_instances=2), generate_trace("S-S", 50, rate=5.0, seed=1))
    >>> len(result.requests), bool(result.requests["finished"].all())
    (50, True)

Events: request arrivals (dispatched at once with ``policy.dispatch``), engine step ends (each engine
plans its next step when the previous one ends: prefill or decode, latency from the latency model),
migration ticks (``policy.pair_instances`` every ``migration_interval_s``, then the multi-stage migration
of :mod:`llumnix_dask.sim.migration`), scaling ticks (``policy.scaling_decision``; a new instance serves
after ``instance_startup_s``; an instance chosen to go is marked terminating, receives nothing, is drained
by migration when the policy migrates, and is removed once empty), and samples of the cluster state.
"""

from __future__ import annotations

import heapq
import itertools
import math
import time
from dataclasses import asdict
from typing import Callable

import numpy as np
import pandas as pd

from llumnix_dask.config import SimConfig
from llumnix_dask.engine.sim import SimEngine, SimSeq
from llumnix_dask.policy.dispatch import DispatchState, dispatch
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.policy.migration import NON_MIGRATING_POLICIES, pair_instances
from llumnix_dask.policy.scaling import ScalingState, scaling_decision
from llumnix_dask.request import Priority, Request, SamplingParams
from llumnix_dask.sim.metrics import SimResult
from llumnix_dask.sim.migration import MigrationModel
from llumnix_dask.workloads import Trace

_STEP, _ARRIVAL, _CALL = 0, 1, 2


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
        self.engines: dict[str, SimEngine] = {}
        self.starting: dict[str, float] = {}
        self._stepping: set[str] = set()
        self._next_instance = itertools.count()
        self.dispatch_state = DispatchState(self.policy.random_seed)
        self.scaling_state = ScalingState()
        self.migrations = MigrationModel(config.latency, config.migration, self.policy, self._schedule_call, self._kick)
        self.migrates = self.policy.migration_enabled and self.policy.dispatch not in NON_MIGRATING_POLICIES
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
        self._frag_samples: list[float] = []
        self._util_samples: list[float] = []  # per (instance, sample): used blocks / total
        self._queued_samples = 0  # (instance, sample) pairs with a queued request
        self._series: list[tuple[float, float, float, float]] = []  # (time, mean, min, max) utilisation
        self.scaling_events: list[dict] = []
        self._bar = None
        max_len = (config.blocks_per_instance - int(config.admission_watermark * config.blocks_per_instance)) \
            * config.block_size
        too_long = np.flatnonzero(trace.input_lens + trace.output_lens > max_len)
        if len(too_long):
            raise ValueError(f"trace: request {int(too_long[0])} needs more than an instance's {max_len} tokens "
                             f"of KV cache (blocks_per_instance less the admission watermark, x block_size)")

    # -- event plumbing ----------------------------------------------------------------------------
    def _push(self, t: float, kind: int, payload) -> None:
        heapq.heappush(self._events, (t, next(self._counter), kind, payload))

    def _schedule_call(self, t: float, fn: Callable[[float], None]) -> None:
        self._push(t, _CALL, fn)

    def _kick(self, engine: SimEngine, now: float) -> None:
        """Start the engine's next step if it is idle and has work."""
        iid = engine.instance_id
        if iid in self._stepping or self.engines.get(iid) is not engine:
            return
        if engine.has_work():
            duration = engine.plan_step(now)
            if engine._plan is not None:
                self._stepping.add(iid)
                self._push(now + duration, _STEP, engine)
                return
        self._maybe_remove(engine, now)

    def _count_change(self, now: float) -> None:
        self._instances_area += (len(self.engines) + len(self.starting)) * (now - self._last_count_change)
        self._last_count_change = now

    def _new_engine(self) -> SimEngine:
        cfg = self.config
        return SimEngine(
            f"i{next(self._next_instance)}", cfg.blocks_per_instance, cfg.block_size, cfg.max_batch_size,
            cfg.max_batched_tokens, cfg.latency, realtime=False, record_tokens=False,
            watermark_blocks=int(cfg.admission_watermark * cfg.blocks_per_instance),
            priority_scheduling=self.policy.priorities_enabled,
        )

    def _maybe_remove(self, engine: SimEngine, now: float) -> None:
        if (engine.terminating and not engine.has_work() and not engine._paused
                and engine.migrations_in_flight == 0 and engine.instance_id not in self._stepping):
            self._count_change(now)
            del self.engines[engine.instance_id]
            self.dispatch_state.forget(engine.instance_id)
            self.scaling_events.append({"time": now, "action": "removed", "instance": engine.instance_id})

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
        loads = [e.load() for e in self.engines.values() if not e.terminating]
        demand = -(-request.num_tokens // self.config.block_size)
        decision = dispatch(loads, RequestLoad(request.request_id, demand, request.priority, request.num_tokens, now),
                            self.policy, self.dispatch_state)
        self.dispatch_state.record(decision.instance_id)
        engine = self.engines[decision.instance_id]
        engine.add_request(request)
        self._kick(engine, now)

    def _on_step_end(self, engine: SimEngine, now: float) -> None:
        self._stepping.discard(engine.instance_id)
        finished, _ = engine.finish_step(now)
        for seq in finished:
            self._record(seq, engine.instance_id)
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
        if self._bar is not None and self._finished % 100 == 0:
            self._bar.update(100)

    def _on_migration_tick(self, now: float) -> None:
        engines = self.engines
        loads = [e.load() for e in engines.values()]
        for pair in pair_instances(loads, self.policy):
            self.migrations.start(pair, engines[pair.src], engines[pair.dst], now)
        if self._finished < len(self.trace):
            self._schedule_call(now + self.policy.migration_interval_s, self._on_migration_tick)

    def _on_scaling_tick(self, now: float) -> None:
        loads = [e.load() for e in self.engines.values()]
        loads += [InstanceLoad(iid, self.config.blocks_per_instance, 0) for iid in self.starting]
        decision = scaling_decision(loads, self.policy, now, self.scaling_state)
        if decision.action == "up":
            self._count_change(now)
            iid = f"i{next(self._next_instance)}"
            self.starting[iid] = now + self.config.instance_startup_s
            self._schedule_call(self.starting[iid], lambda t, iid=iid: self._on_ready(iid, t))
            self.scaling_events.append({"time": now, "action": "up", "instance": iid, **_plain(decision.reason)})
        elif decision.action == "down":
            iid = decision.instance_id
            self.scaling_events.append({"time": now, "action": "down", "instance": iid, **_plain(decision.reason)})
            if iid in self.starting:  # not serving yet: cancel its start
                self._count_change(now)
                del self.starting[iid]
            else:
                engine = self.engines[iid]
                engine.terminating = True
                self._maybe_remove(engine, now)
        if self._finished < len(self.trace):
            self._schedule_call(now + self.policy.scaling_interval_s, self._on_scaling_tick)

    def _on_ready(self, iid: str, now: float) -> None:
        if iid not in self.starting:
            return
        self._count_change(now)
        del self.starting[iid]
        engine = self._new_engine()
        engine.instance_id = iid
        engine.now = now
        self.engines[iid] = engine

    def _on_sample(self, now: float) -> None:
        fragmented = 0
        total = 0
        utils = []
        for e in self.engines.values():
            total += e.num_blocks
            utils.append(1.0 - len(e._free) / e.num_blocks)
            w = e._waiting
            if w:
                self._queued_samples += 1
                if -(-w[0].total // e.block_size) > len(e._free):
                    fragmented += len(e._free)
        if total:
            self._frag_samples.append(fragmented / total)
            self._util_samples += utils
            self._series.append((now, sum(utils) / len(utils), min(utils), max(utils)))
        if self._finished < len(self.trace):
            self._schedule_call(now + self.config.sample_interval_s, self._on_sample)

    # -- run ---------------------------------------------------------------------------------------
    def run(self) -> SimResult:
        """Simulate until every request has finished; returns the measurements."""
        wall = time.perf_counter()
        for _ in range(self.config.num_instances):
            e = self._new_engine()
            self.engines[e.instance_id] = e
        for i, t in enumerate(self.trace.arrival_s):
            self._push(float(t), _ARRIVAL, i)
        if self.migrates:
            self._schedule_call(self.policy.migration_interval_s, self._on_migration_tick)
        if self.policy.scaling_enabled:
            self._schedule_call(self.policy.scaling_interval_s, self._on_scaling_tick)
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
        return self._result(end, time.perf_counter() - wall)

    def _result(self, end: float, wall: float) -> SimResult:
        tr = self.trace
        out = tr.output_lens.astype(np.float64)
        arrival = tr.arrival_s
        with np.errstate(invalid="ignore", divide="ignore"):
            decode = np.where(out > 1, (self._finish - self._first) / (out - 1), np.nan)
        df = pd.DataFrame({
            "request_id": [f"r{i}" for i in range(len(tr))],
            "arrival_s": arrival,
            "input_len": tr.input_lens,
            "output_len": tr.output_lens,
            "priority": np.where(tr.high_priority, "high", "normal"),
            "prefill_s": self._first - arrival,
            "decode_s": decode,
            "e2e_s": self._finish - arrival,
            "preemptions": self._preemptions,
            "preemption_loss_s": self._loss,
            "migrations": self._migrated,
            "instance": self._instance,
            "finished": np.isfinite(self._finish),
        })
        frag = float(np.mean(self._frag_samples)) if self._frag_samples else 0.0
        return SimResult(
            config=_plain(asdict(self.config)),
            trace=tr.describe(),
            requests=df,
            average_instances=self._instances_area / end if end > 0 else float(self.config.num_instances),
            fragmentation=frag,
            migrations=self.migrations.stats.to_dict(),
            sim_time_s=end,
            wall_time_s=wall,
            scaling_events=self.scaling_events,
            memory=self._memory_summary(),
        )

    def _memory_summary(self) -> dict:
        u = np.asarray(self._util_samples)
        if not len(u):
            return {}
        q = np.percentile(u, [50, 90, 99])
        step = max(1, len(self._series) // 200)  # keep the JSON small: ~200 points
        return {
            "util_mean": float(u.mean()), "util_p50": float(q[0]), "util_p90": float(q[1]), "util_p99": float(q[2]),
            "share_over_90pct": float((u > 0.9).mean()),
            "share_with_queue": self._queued_samples / len(u),
            "series": [[round(x, 3) for x in p] for p in self._series[::step]],
        }


def _plain(d: dict) -> dict:
    """JSON-friendly copy (inf -> None)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _plain(v)
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def simulate(config: SimConfig, trace: Trace, progress: bool = False) -> SimResult:
    """Run one simulation (see :class:`Simulator`)."""
    return Simulator(config, trace, progress).run()
