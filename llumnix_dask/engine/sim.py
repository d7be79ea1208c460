"""A latency-model engine: paged KV blocks and continuous batching, without tensors.

``SimEngine`` implements :class:`~llumnix_dask.engine.base.EngineBackend` over
:class:`~llumnix_dask.sim_config.LatencyModel`, so the simulator (and, with ``realtime=True``, a Dask cluster)
can run the real policies over many instances cheaply::

    >>> from llumnix_dask.request import Request, SamplingParams
    >>> eng = SimEngine("i0", num_blocks=100)
    >>> eng.add_request(Request.new([1] * 40, SamplingParams(max_tokens=3), request_id="r"))
    >>> [len(o.new_token_ids) for o in eng.step()], round(eng.last_step_time_s, 4)  # prefill: a weights read + overhead
    ([1], 0.0355)
    >>> while eng.has_work(): outs = eng.step()
    >>> outs[0].finished, outs[0].finish_reason
    (True, 'length')

Scheduling follows vLLM 0.2, the engine the paper built on. A step is either a *prefill* step that admits
queued requests in queue order (FCFS, head-of-line blocking: the first that does not fit stops admission)
while blocks (leaving ``watermark_blocks`` free, vLLM's admission watermark), batch slots and the prefill
token budget allow (the first one is always allowed so a long prompt cannot starve), or a *decode* step that
gives every running request one token. Before a decode step the running requests are taken in arrival order,
each needing one free block at its turn (vLLM's ``can_append_slot``) and taking one if its next token opens a
new block; when none is free the latest-*arrived* running request is preempted by recompute: it frees all
its blocks and goes back to the head of the queue; its re-prefill later recomputes prompt + generated
tokens (so an instance with no free block preempts even if no request needs one, as vLLM 0.2 did).

With ``priority_scheduling`` (local scheduling by priority, paper section 4.4.2) the queue holds the
high-priority requests ahead of the normal ones (FCFS within a class), and preemption takes the most
recently arrived *normal* request before any high-priority one. Without it the queue is plain FCFS.

Fake token ids are a function of (seed, position) - the request's sampling seed, or a hash of its id - so
a migrated request produces exactly the ids it would have produced without moving.

The simulator drives the engine through :meth:`plan_step` / :meth:`finish_step` with ``record_tokens=False``,
which keeps per-request counters instead of token lists (fast); :meth:`step` is the protocol form.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Sequence

from llumnix_dask.sim_config import LatencyModel
from llumnix_dask.engine.base import MigrationState, StepOutput
from llumnix_dask.engine.sim_queues import SimQueues
from llumnix_dask.engine.sim_seq import VOCAB, SimSeq
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.request import Request, RequestStatus

__all__ = ["VOCAB", "SimEngine", "SimSeq"]


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
        watermark_blocks: int = 0,
        priority_scheduling: bool = False,
        vocab_size: int = VOCAB,
        detokenize: Callable[[list[int]], str] | None = None,
        detailed_load: bool | None = None,
    ) -> None:
        for name, value in (("num_blocks", num_blocks), ("block_size", block_size),
                            ("max_batch_size", max_batch_size), ("max_batched_tokens", max_batched_tokens)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"SimEngine.{name}: must be an integer >= 1, got {value!r}")
        if not isinstance(watermark_blocks, int) or not 0 <= watermark_blocks < num_blocks:
            raise ValueError(
                f"SimEngine.watermark_blocks: must be an integer in [0, num_blocks), got {watermark_blocks!r}")
        self.watermark_blocks = watermark_blocks
        # load() lists every request (as the nano engine's does) so that a served cluster's scheduler and
        # worker can pick the request to migrate; the simulator reports the O(1) summary at every step and
        # lists the requests only where a migration starts. Default: detailed when serving (realtime).
        self.detailed_load = realtime if detailed_load is None else detailed_load
        self.priority_scheduling = priority_scheduling
        # Token ids are drawn below this, so a frontend's tokenizer can turn them into text.
        self.vocab_size = vocab_size
        self.detokenize = detokenize  # token ids -> text, for StepOutput.text_delta (None: no text)
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
        self.queues = SimQueues(num_blocks, block_size, priority_scheduling)
        # The planned step: ("prefill" | "decode", seqs) or None.
        self._plan: tuple[str, list[SimSeq]] | None = None
        ms = self.latency
        self._decode_base = ms.decode_base_ms / 1000.0
        self._per_seq = ms.decode_ms_per_seq / 1000.0
        self._per_kv = ms.decode_ms_per_kv_token / 1000.0
        self._compute_per_seq = ms.prefill_ms_per_token / 1000.0  # decode can not beat its compute
        self._overhead = ms.step_overhead_ms / 1000.0
        self._overhead_per_seq = ms.step_overhead_ms_per_seq / 1000.0

    # -- serving -----------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a request (FCFS by arrival time). A request moved from another engine keeps its progress."""
        with self._lock:
            seq = SimSeq.of(request)  # a continued request (recovery) recomputes its tokens so far
            need = -(-(seq.prompt_len + seq.max_tokens) // self.block_size)
            if need > self.num_blocks - self.watermark_blocks:
                raise ValueError(
                    f"request {request.request_id}: prompt + max_tokens = {seq.prompt_len + seq.max_tokens} tokens "
                    f"need {need} blocks, more than this instance's {self.num_blocks} less its admission "
                    f"watermark of {self.watermark_blocks}"
                )
            if request.request_id in self.queues.seqs:
                raise ValueError(f"request {request.request_id}: already on instance {self.instance_id}")
            self.queues.track(seq)
            request.instance_id = self.instance_id
            self.queues.enqueue(seq)

    def abort(self, request_id: str) -> bool:
        with self._lock:
            seq = self.queues.remove(request_id)
            if seq is None:
                return False
            seq.request.finish_reason = "abort"
            seq.request.transition(RequestStatus.ABORTED, self.now, "aborted")
            return True

    def has_work(self) -> bool:
        return bool(self.queues.running or self.queues.waiting)

    def get_request(self, request_id: str) -> Request | None:
        seq = self.queues.seqs.get(request_id)
        return None if seq is None else seq.request

    @property
    def num_free_blocks(self) -> int:
        return len(self.queues.free)

    @property
    def step_planned(self) -> bool:
        """A step was planned (:meth:`plan_step`) and not yet applied."""
        return self._plan is not None

    def plan_step(self, now: float) -> float:
        """Decide the next step's batch at ``now`` and allocate its blocks; returns its model time (s),
        0.0 if there is nothing to do. Apply it with :meth:`finish_step` once that time has passed."""
        with self._lock:
            self.now = now
            admitted = self._admit(now)
            if admitted:
                tokens = sum(s.total for s in admitted)
                duration = self.latency.prefill_step_ms(tokens, len(admitted)) / 1000.0
                self._plan = ("prefill", admitted)
            elif self.queues.running:
                duration, batch = self._plan_decode(now)
                self._plan = ("decode", batch) if batch else None  # all preempted: nothing runs
            else:
                self._plan = None
                duration = 0.0
            self.last_step_time_s = duration
            return duration

    def _admit(self, now: float) -> list[SimSeq]:
        admitted: list[SimSeq] = []
        q = self.queues
        waiting, bs = q.waiting, self.block_size
        room = len(q.free) - self.watermark_blocks
        budget = self.max_batched_tokens
        slots = self.max_batch_size - len(q.running)
        while waiting and slots > 0:
            seq = waiting[0]
            total = seq.total
            need = -(-total // bs)
            if need > room or (admitted and total > budget):
                break
            room -= need
            q.pop_head()
            q.give(seq, need)
            seq.owner = self
            seq.admitted_at = now
            q.join_running(seq)
            admitted.append(seq)
            budget -= total
            slots -= 1
            if seq.request.status is RequestStatus.WAITING:
                seq.request.transition(RequestStatus.RUNNING, now)
        return admitted

    def _plan_decode(self, now: float) -> tuple[float, list[SimSeq]]:
        q = self.queues
        free, running = q.free, q.running
        needy = 0
        for s in running:
            if s.total > s.capacity:
                needy += 1
        last = running[-1]
        # Taken in policy order, each request needs a free block at its turn and the needy ones take one: all
        # pass unless the blocks run out before the last request's turn.
        if len(free) < 1 + needy - (last.total > last.capacity):
            self._preempt_until_fits(now)
        for s in running:
            if s.total > s.capacity:
                q.give(s, 1)
        n = len(running)
        if not n:
            return 0.0, []
        kv_tokens = 0
        for s in running:
            kv_tokens += s.total
        # Roofline: weights + KV reads at the achieved bandwidth, or the batch's compute if that is longer; then
        # the serving loop's work around the step (LatencyModel.decode_step_ms, inlined: this is the hot path).
        model = max(self._decode_base + self._per_seq * n + self._per_kv * kv_tokens, self._compute_per_seq * n)
        return model + self._overhead + self._overhead_per_seq * n, list(running)

    def _preempt_until_fits(self, now: float) -> None:
        """vLLM 0.2's loop: in policy order, while no block is free at a request's turn, preempt the last
        request in that order (the latest arrival; with priority scheduling the latest normal one), which is
        the request itself when none comes after it."""
        taken = 0  # blocks the requests before the current one will take
        free = self.queues.free
        order = list(self.queues.running)
        i = 0
        while i < len(order):
            s = order[i]
            while len(free) - taken < 1:
                victim = order.pop()  # the last in policy order; the request itself when it is the last
                self._preempt(victim, now)
                if victim is s:
                    break
            else:
                if s.total > s.capacity:
                    taken += 1
                i += 1

    def _preempt(self, seq: SimSeq, now: float) -> None:
        q = self.queues
        q.leave_running(seq)
        q.release(seq)
        seq.preempted_at = now
        self.num_preemptions += 1
        seq.request.transition(RequestStatus.WAITING, now, "preempted")
        q.enqueue(seq, front=True)

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
                    token = s.token_id(s.total - 1) % self.vocab_size
                    s.request.append_token(token, now)
                    text = self.detokenize([token]) if self.detokenize is not None else ""
                    outputs.append(StepOutput(s.request.request_id, [token], text, finished=done,
                                              finish_reason="length" if done else None))
            q = self.queues
            for s in finished:
                q.leave_running(s)
                q.release(s)
                q.forget(s)
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
    def load(self, detailed: bool | None = None) -> InstanceLoad:
        """Snapshot of the instance; ``detailed=True`` also lists every request (for migration's request
        selection). None: the engine's ``detailed_load``. The aggregates are O(1) counters."""
        with self._lock:
            q = self.queues
            used = self.num_blocks - len(q.free)
            waiting = q.waiting
            running: tuple[RequestLoad, ...] = ()
            queued: tuple[RequestLoad, ...] = ()
            if detailed or (detailed is None and self.detailed_load):
                running, queued = q.request_loads()
            return InstanceLoad(
                instance_id=self.instance_id,
                total_blocks=self.num_blocks,
                used_blocks=used,
                num_running=len(q.running) + len(q.paused),
                num_waiting=len(waiting),
                running_blocks=used,  # reserved blocks of incoming migrations count as used
                waiting_demand_blocks=q.waiting_demand,
                hol_demand_blocks=q.demand(waiting[0]) if waiting else 0,
                num_high_priority=q.num_high,
                num_preempted_waiting=q.num_preempted_waiting,
                terminating=self.terminating,
                migrating=self.migrations_in_flight > 0,
                num_preemptions=self.num_preemptions,
                time=self.now,
                running=running,
                waiting=queued,
            )

    # -- migration: source side --------------------------------------------------------------------
    def _held(self, request_id: str) -> SimSeq:
        return self.queues.held(request_id, self.instance_id)

    def request_blocks(self, request_id: str) -> list[int]:
        with self._lock:
            return list(self._held(request_id).block_ids)

    def num_kv_tokens(self, request_id: str) -> int:
        with self._lock:
            return self._held(request_id).total - 1

    def export_blocks(self, block_ids: Sequence[int]) -> Any:
        """No tensors here: a small descriptor of what would be copied."""
        return {"instance_id": self.instance_id, "num_blocks": len(block_ids), "block_ids": list(block_ids)}

    def pause(self, request_id: str) -> MigrationState:
        with self._lock:
            seq = self._held(request_id)
            if not seq.active:
                raise KeyError(f"request {request_id} is already paused on instance {self.instance_id}")
            self.queues.pause(seq)
            seq.request.transition(RequestStatus.MIGRATING, self.now, f"paused on {self.instance_id}")
            return MigrationState(seq.request, seq.total - 1, list(seq.block_ids), {"sim_seq": seq})

    def resume(self, request_id: str) -> None:
        with self._lock:
            seq = self.queues.resume(request_id)
            seq.request.transition(RequestStatus.RUNNING, self.now, "migration failed, resumed")

    def release(self, request_id: str) -> None:
        with self._lock:
            seq = self.queues.paused[request_id][0]
            self.queues.drop_paused(request_id, still_ours=seq.owner is self)

    def take_waiting(self, request_id: str) -> Request:
        with self._lock:
            return self.queues.take_waiting(request_id, self.instance_id).request

    # -- migration: destination side ---------------------------------------------------------------
    def reserve_blocks(self, n: int, watermark: int = 0) -> list[int] | None:
        with self._lock:
            return self.queues.reserve(n, watermark)

    def import_blocks(self, block_ids: Sequence[int], buffer: Any) -> None:
        if isinstance(buffer, dict) and buffer.get("num_blocks") != len(block_ids):
            raise ValueError(f"import_blocks: buffer holds {buffer.get('num_blocks')} blocks, got {len(block_ids)} ids")

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        with self._lock:
            self.queues.unreserve(list(block_ids))

    def commit_migrated(self, state: MigrationState, block_ids: Sequence[int]) -> None:
        with self._lock:
            request = state.request
            seq = state.extra.get("sim_seq")
            if not isinstance(seq, SimSeq):  # it crossed a process boundary: rebuilt from the request
                seq = SimSeq.of(request)
            if len(block_ids) * self.block_size < seq.total - 1:
                raise ValueError(f"commit_migrated: {len(block_ids)} blocks cannot hold {seq.total - 1} KV tokens")
            request.metadata["sim_seq"] = seq
            seq.owner = self
            self.queues.adopt(seq, list(block_ids))
            request.instance_id = self.instance_id
            request.num_migrations += 1
            request.transition(RequestStatus.RUNNING, self.now, f"migrated to {self.instance_id}")
