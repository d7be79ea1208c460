"""A latency-model engine: paged KV blocks and continuous batching, without tensors.

``SimEngine`` implements :class:`~llumnix_dask.engine.base.EngineBackend` over
:class:`~llumnix_dask.config.LatencyModel`, so the simulator (and, with ``realtime=True``, a Dask cluster)
can run the real policies over many instances cheaply::

    >>> from llumnix_dask.request import Request, SamplingParams
    >>> eng = SimEngine("i0", num_blocks=100)
    >>> eng.add_request(Request.new([1] * 40, SamplingParams(max_tokens=3), request_id="r"))
    >>> [len(o.new_token_ids) for o in eng.step()], round(eng.last_step_time_s, 4)   # prefill 40 tokens
    ([1], 0.0096)
    >>> while eng.has_work(): outs = eng.step()
    >>> outs[0].finished, outs[0].finish_reason
    (True, 'length')

Scheduling follows the vLLM (v0) engine the paper built on: a step is either a *prefill* step that admits
queued requests FCFS while blocks, batch slots and the prefill token budget allow (the first one is always
allowed so a long prompt cannot starve), or a *decode* step that gives every running request one token.
Before a decode step every request whose next token needs a new block gets one; when the blocks run out
the most recently admitted running request is preempted by recompute: it frees all its blocks and goes
back to the head of the queue; its re-prefill later recomputes prompt + generated tokens.

Fake token ids are a function of (seed, position) - the request's sampling seed, or a hash of its id - so
a migrated request produces exactly the ids it would have produced without moving.

The simulator drives the engine through :meth:`plan_step` / :meth:`finish_step` with ``record_tokens=False``,
which keeps per-request counters instead of token lists (fast); :meth:`step` is the protocol form.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import deque
from typing import Any, Callable, Sequence

from llumnix_dask.config import LatencyModel
from llumnix_dask.engine.base import MigrationState, StepOutput
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.request import Priority, Request, RequestStatus

VOCAB = 32000


class SimSeq:
    """Per-request engine state; it travels with the request (``request.metadata["sim_seq"]``) on migration."""

    __slots__ = ("request", "prompt_len", "max_tokens", "generated", "total", "block_ids", "capacity", "high",
                 "active", "owner", "preempted_at", "preemption_loss_s", "token_seed", "admitted_at")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.prompt_len = request.num_prompt_tokens
        self.max_tokens = request.sampling.max_tokens
        self.generated = 0
        self.total = self.prompt_len  # prompt + generated tokens (kept in step with ``generated``)
        self.block_ids: list[int] = []
        self.capacity = 0  # tokens the blocks can hold
        self.high = request.priority >= Priority.HIGH
        self.active = False  # in the running batch of ``owner``
        self.owner: object = None  # the engine whose batch it is in
        self.preempted_at: float | None = None
        self.preemption_loss_s = 0.0  # wait until re-prefill + recompute, summed over preemptions
        seed = request.sampling.seed
        self.token_seed = seed if seed is not None else zlib.crc32(request.request_id.encode())
        self.admitted_at = 0.0

    def token_id(self, position: int) -> int:
        return (self.token_seed * 1_000_003 + position * 7_919) % VOCAB


class SimEngine:
    """Continuous-batching paged-KV engine over a latency model (see the module docstring).

    ``now`` is the engine's clock: model time advanced by :meth:`step` (or set by the simulator), or the
    wall clock with ``realtime=True``, where :meth:`step` also sleeps for the step's model time.
    """

    def __init__(
        self,
        instance_id: str,
        num_blocks: int = 1000,
        block_size: int = 16,
        max_batch_size: int = 256,
        max_batched_tokens: int = 8192,
        latency: LatencyModel | None = None,
        realtime: bool = False,
        record_tokens: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size),
                            ("max_batch_size", max_batch_size), ("max_batched_tokens", max_batched_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SimEngine.{name}: must be an integer >= 1, got {value!r}")
        self.instance_id = instance_id
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.max_batch_size = max_batch_size
        self.max_batched_tokens = max_batched_tokens
        self.latency = latency or LatencyModel()
        self.realtime = realtime
        self.record_tokens = record_tokens
        self._clock = clock
        self.now = clock() if realtime else 0.0
        self.last_step_time_s = 0.0
        self.terminating = False
        self.migrations_in_flight = 0  # set by the migration driver; reported as load.migrating
        self.num_preemptions = 0
        self._lock = threading.RLock()
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._seqs: dict[str, SimSeq] = {}
        self._running: list[SimSeq] = []
        self._waiting: deque[SimSeq] = deque()
        # Paused for migration: the request and the blocks it holds here (the request's own block table is
        # replaced by the destination's on commit, so the source keeps its copy to free on release).
        self._paused: dict[str, tuple[SimSeq, list[int]]] = {}
        self._waiting_demand = 0
        self._num_high = 0
        self._num_preempted_waiting = 0
        # The planned step: ("prefill" | "decode", seqs) or None.
        self._plan: tuple[str, list[SimSeq]] | None = None
        ms = self.latency
        self._decode_base = ms.decode_base_ms / 1000.0
        self._per_seq = ms.decode_ms_per_seq / 1000.0
        self._per_kv = ms.decode_ms_per_kv_token / 1000.0

    # -- helpers -----------------------------------------------------------------------------------
    def _demand(self, seq: SimSeq) -> int:
        return -(-seq.total // self.block_size)

    def _enqueue(self, seq: SimSeq, front: bool = False) -> None:
        if front:
            self._waiting.appendleft(seq)
        elif self._waiting and self._waiting[-1].request.arrival_time > seq.request.arrival_time:
            # A request moved here from another queue keeps its FCFS place by arrival time.
            idx = len(self._waiting)
            while idx > 0 and self._waiting[idx - 1].request.arrival_time > seq.request.arrival_time:
                idx -= 1
            self._waiting.insert(idx, seq)
        else:
            self._waiting.append(seq)
        self._waiting_demand += self._demand(seq)
        if seq.preempted_at is not None:
            self._num_preempted_waiting += 1

    def _dequeue(self, seq: SimSeq) -> None:
        self._waiting_demand -= self._demand(seq)
        if seq.preempted_at is not None:
            self._num_preempted_waiting -= 1

    def _free_seq_blocks(self, seq: SimSeq) -> None:
        self._free.extend(seq.block_ids)
        seq.block_ids = []
        seq.capacity = 0

    def _forget(self, seq: SimSeq) -> None:
        del self._seqs[seq.request.request_id]
        if seq.high:
            self._num_high -= 1

    # -- serving -----------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a request (FCFS by arrival time). A request moved from another engine keeps its progress."""
        with self._lock:
            seq = request.metadata.get("sim_seq")
            if not isinstance(seq, SimSeq) or seq.request is not request:
                seq = SimSeq(request)
                request.metadata["sim_seq"] = seq
            need = -(-(seq.prompt_len + seq.max_tokens) // self.block_size)
            if need > self.num_blocks:
                raise ValueError(
                    f"request {request.request_id}: prompt + max_tokens = {seq.prompt_len + seq.max_tokens} tokens "
                    f"need {need} blocks, more than this instance's {self.num_blocks}"
                )
            if request.request_id in self._seqs:
                raise ValueError(f"request {request.request_id}: already on instance {self.instance_id}")
            self._seqs[request.request_id] = seq
            if seq.high:
                self._num_high += 1
            request.instance_id = self.instance_id
            self._enqueue(seq)

    def abort(self, request_id: str) -> bool:
        with self._lock:
            seq = self._seqs.get(request_id)
            if seq is None:
                return False
            if seq.active:
                self._running.remove(seq)
                seq.active = False
            elif request_id in self._paused:
                _, blocks = self._paused.pop(request_id)
                self._free.extend(blocks)
                seq.block_ids, seq.capacity = [], 0
            else:
                self._waiting.remove(seq)
                self._dequeue(seq)
            self._free_seq_blocks(seq)
            self._forget(seq)
            seq.request.finish_reason = "abort"
            seq.request.transition(RequestStatus.ABORTED, self.now, "aborted")
            return True

    def has_work(self) -> bool:
        return bool(self._running or self._waiting)

    def get_request(self, request_id: str) -> Request | None:
        seq = self._seqs.get(request_id)
        return None if seq is None else seq.request

    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def plan_step(self, now: float) -> float:
        """Decide the next step's batch at ``now`` and allocate its blocks; returns its model time (s),
        0.0 if there is nothing to do. Apply it with :meth:`finish_step` once that time has passed."""
        with self._lock:
            self.now = now
            admitted = self._admit(now)
            if admitted:
                tokens = sum(s.total for s in admitted)
                duration = (self.latency.prefill_base_ms + self.latency.prefill_ms_per_token * tokens) / 1000.0
                self._plan = ("prefill", admitted)
            elif self._running:
                duration, batch = self._plan_decode(now)
                self._plan = ("decode", batch)
            else:
                self._plan = None
                duration = 0.0
            self.last_step_time_s = duration
            return duration

    def _admit(self, now: float) -> list[SimSeq]:
        admitted: list[SimSeq] = []
        waiting, free, bs = self._waiting, self._free, self.block_size
        budget = self.max_batched_tokens
        slots = self.max_batch_size - len(self._running)
        while waiting and slots > 0:
            seq = waiting[0]
            total = seq.total
            need = -(-total // bs)
            if need > len(free) or (admitted and total > budget):
                break
            waiting.popleft()
            self._dequeue(seq)
            seq.block_ids = [free.pop() for _ in range(need)]
            seq.capacity = need * bs
            seq.active = True
            seq.owner = self
            seq.admitted_at = now
            self._running.append(seq)
            admitted.append(seq)
            budget -= total
            slots -= 1
            if seq.request.status is RequestStatus.WAITING:
                seq.request.transition(RequestStatus.RUNNING, now)
        return admitted

    def _plan_decode(self, now: float) -> tuple[float, list[SimSeq]]:
        free, bs, running = self._free, self.block_size, self._running
        needy = []
        kv_tokens = 0
        for s in running:
            t = s.total
            kv_tokens += t
            if t > s.capacity:
                needy.append(s)
        preempted = False
        while len(needy) > len(free) and len(running) > 1:
            victim = running[-1]  # the most recently admitted request
            self._preempt(victim, now)
            preempted = True
            needy = [s for s in needy if s is not victim]
        short = False
        for s in needy:
            if free:
                s.block_ids.append(free.pop())
                s.capacity += bs
            else:  # only when reserved migration blocks hold the rest: this request sits the step out
                short = True
        if short or preempted:
            batch = [s for s in running if s.total <= s.capacity] if short else list(running)
            kv_tokens = sum(s.total for s in batch)
        else:
            batch = list(running)
        return self._decode_base + self._per_seq * len(batch) + self._per_kv * kv_tokens, batch

    def _preempt(self, seq: SimSeq, now: float) -> None:
        self._running.remove(seq)
        seq.active = False
        self._free_seq_blocks(seq)
        seq.preempted_at = now
        self.num_preemptions += 1
        seq.request.transition(RequestStatus.WAITING, now, "preempted")
        self._enqueue(seq, front=True)

    def finish_step(self, now: float) -> tuple[list[SimSeq], list[StepOutput]]:
        """Apply the planned step at ``now``: every request in it gains one token. Returns the finished
        requests' states and, with ``record_tokens``, one StepOutput per request that got a token."""
        with self._lock:
            self.now = now
            plan, self._plan = self._plan, None
            if plan is None:
                return [], []
            kind, seqs = plan
            finished: list[SimSeq] = []
            outputs: list[StepOutput] = []
            record = self.record_tokens
            for s in seqs:
                if not s.active or s.owner is not self:  # paused, migrated or preempted after planning
                    continue
                if kind == "prefill" and s.preempted_at is not None:
                    s.preemption_loss_s += now - s.preempted_at
                    s.preempted_at = None
                if s.request.first_token_time is None:
                    s.request.first_token_time = now
                s.generated += 1
                s.total += 1
                done = s.generated >= s.max_tokens
                if done:
                    finished.append(s)
                if record:
                    token = s.token_id(s.total - 1)
                    s.request.append_token(token, now)
                    outputs.append(StepOutput(s.request.request_id, [token], finished=done,
                                              finish_reason="length" if done else None))
            for s in finished:
                self._running.remove(s)
                s.active = False
                self._free_seq_blocks(s)
                self._forget(s)
                s.request.finish_reason = "length"
                s.request.transition(RequestStatus.FINISHED, now)
            return finished, outputs

    def step(self) -> list[StepOutput]:
        """Plan, (sleep if realtime,) and apply one step; ``last_step_time_s`` is its model time."""
        start = self._clock() if self.realtime else self.now
        duration = self.plan_step(start)
        if self.realtime:
            time.sleep(duration)
            end = self._clock()
        else:
            end = start + duration
        return self.finish_step(end)[1]

    # -- load --------------------------------------------------------------------------------------
    def load(self, detailed: bool = False) -> InstanceLoad:
        """O(1) snapshot; ``detailed=True`` also lists every request (for migration's request selection)."""
        used = self.num_blocks - len(self._free)
        if detailed:
            with self._lock:
                bs = self.block_size
                running = [self._request_load(s, len(s.block_ids), False) for s in self._running]
                running += [self._request_load(s, len(b), True) for s, b in self._paused.values()]
                waiting = [self._request_load(s, -(-s.total // bs), False) for s in self._waiting]
            load = InstanceLoad.from_requests(
                self.instance_id, self.num_blocks, used, running, waiting, terminating=self.terminating,
                migrating=self.migrations_in_flight > 0, num_preemptions=self.num_preemptions, time=self.now,
            )
            # Reserved blocks of incoming migrations are used too: count them so the load is consistent.
            return load if load.running_blocks == used else _with_running_blocks(load, used)
        waiting = self._waiting
        return InstanceLoad(
            instance_id=self.instance_id,
            total_blocks=self.num_blocks,
            used_blocks=used,
            num_running=len(self._running) + len(self._paused),
            num_waiting=len(waiting),
            running_blocks=used,  # reserved blocks of incoming migrations count as used
            waiting_demand_blocks=self._waiting_demand,
            hol_demand_blocks=-(-waiting[0].total // self.block_size) if waiting else 0,
            num_high_priority=self._num_high,
            num_preempted_waiting=self._num_preempted_waiting,
            terminating=self.terminating,
            migrating=self.migrations_in_flight > 0,
            num_preemptions=self.num_preemptions,
            time=self.now,
        )

    @staticmethod
    def _request_load(s: SimSeq, blocks: int, migrating: bool) -> RequestLoad:
        r = s.request
        return RequestLoad(r.request_id, blocks, r.priority, s.total, r.arrival_time,
                           preempted=s.preempted_at is not None, migrating=migrating)

    # -- migration: source side --------------------------------------------------------------------
    def _running_seq(self, request_id: str) -> SimSeq:
        seq = self._seqs.get(request_id)
        if seq is None or not (seq.active or request_id in self._paused):
            raise KeyError(f"request {request_id} is not running on instance {self.instance_id}")
        return seq

    def request_blocks(self, request_id: str) -> list[int]:
        with self._lock:
            return list(self._running_seq(request_id).block_ids)

    def num_kv_tokens(self, request_id: str) -> int:
        with self._lock:
            return self._running_seq(request_id).total - 1

    def export_blocks(self, block_ids: Sequence[int]) -> Any:
        """No tensors here: a small descriptor of what would be copied."""
        return {"instance_id": self.instance_id, "num_blocks": len(block_ids), "block_ids": list(block_ids)}

    def pause(self, request_id: str) -> MigrationState:
        with self._lock:
            seq = self._running_seq(request_id)
            if not seq.active:
                raise KeyError(f"request {request_id} is already paused on instance {self.instance_id}")
            self._running.remove(seq)
            seq.active = False
            self._paused[request_id] = (seq, seq.block_ids)
            seq.request.transition(RequestStatus.MIGRATING, self.now, f"paused on {self.instance_id}")
            return MigrationState(seq.request, seq.total - 1, list(seq.block_ids), {"sim_seq": seq})

    def resume(self, request_id: str) -> None:
        with self._lock:
            seq, blocks = self._paused.pop(request_id)
            seq.block_ids, seq.capacity = blocks, len(blocks) * self.block_size
            seq.active = True
            self._running.append(seq)
            seq.request.transition(RequestStatus.RUNNING, self.now, "migration failed, resumed")

    def release(self, request_id: str) -> None:
        with self._lock:
            seq, blocks = self._paused.pop(request_id)
            self._free.extend(blocks)
            if seq.owner is self:  # not adopted elsewhere (yet): drop our view of the blocks too
                seq.block_ids, seq.capacity = [], 0
            self._forget(seq)

    def take_waiting(self, request_id: str) -> Request:
        with self._lock:
            seq = self._seqs.get(request_id)
            if seq is None or seq.active or request_id in self._paused:
                raise KeyError(f"request {request_id} is not queued on instance {self.instance_id}")
            self._waiting.remove(seq)
            self._dequeue(seq)
            self._forget(seq)
            return seq.request

    # -- migration: destination side ---------------------------------------------------------------
    def reserve_blocks(self, n: int, watermark: int = 0) -> list[int] | None:
        with self._lock:
            if n < 0 or len(self._free) - n < watermark:
                return None
            return [self._free.pop() for _ in range(n)]

    def import_blocks(self, block_ids: Sequence[int], buffer: Any) -> None:
        if isinstance(buffer, dict) and buffer.get("num_blocks") != len(block_ids):
            raise ValueError(f"import_blocks: buffer holds {buffer.get('num_blocks')} blocks, got {len(block_ids)} ids")

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        with self._lock:
            self._free.extend(block_ids)

    def commit_migrated(self, state: MigrationState, block_ids: Sequence[int]) -> None:
        with self._lock:
            request = state.request
            seq = state.extra.get("sim_seq") or request.metadata.get("sim_seq")
            if not isinstance(seq, SimSeq):
                seq = SimSeq(request)
                seq.generated = request.num_output_tokens
                seq.total = seq.prompt_len + seq.generated
            request.metadata["sim_seq"] = seq
            seq.block_ids = list(block_ids)
            seq.capacity = len(block_ids) * self.block_size
            if seq.capacity < seq.total - 1:
                raise ValueError(f"commit_migrated: {len(block_ids)} blocks cannot hold {seq.total - 1} KV tokens")
            seq.active = True
            seq.owner = self
            self._seqs[request.request_id] = seq
            if seq.high:
                self._num_high += 1
            self._running.append(seq)
            request.instance_id = self.instance_id
            request.num_migrations += 1
            request.transition(RequestStatus.RUNNING, self.now, f"migrated to {self.instance_id}")


def _with_running_blocks(load: InstanceLoad, used: int) -> InstanceLoad:
    from dataclasses import replace

    return replace(load, running_blocks=used)
