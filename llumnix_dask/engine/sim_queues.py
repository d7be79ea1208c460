"""The bookkeeping of one simulated engine: its free blocks, the queue, the running batch and the requests
paused for migration. The only code that moves a :class:`SimSeq` between them or hands out and frees its
blocks; :class:`~llumnix_dask.engine.sim.SimEngine` decides *what* to run and *when*, and calls this.

Counters the load reports need (queued demand, high-priority and preempted requests in the queue) are kept
up to date on every move, so a load report is O(1) whatever the queue length.
"""

from __future__ import annotations

import bisect
from collections import deque

from llumnix_dask.engine.sim_seq import SimSeq
from llumnix_dask.policy.load import RequestLoad


def _arrival(seq: SimSeq) -> float:
    return seq.request.arrival_time


def _priority_then_arrival(seq: SimSeq) -> tuple[bool, float]:
    return (not seq.high, seq.request.arrival_time)


class SimQueues:
    """Blocks, queue and batch of one SimEngine (its lock guards every call). Attributes are for reading."""

    def __init__(self, num_blocks: int, block_size: int, priority_scheduling: bool) -> None:
        self.block_size = block_size
        self.priority_scheduling = priority_scheduling
        self.free: list[int] = list(range(num_blocks - 1, -1, -1))
        self.seqs: dict[str, SimSeq] = {}  # every request here: queued, running or paused
        self.running: list[SimSeq] = []  # in the order of the scheduling policy (see join_running)
        self.waiting: deque[SimSeq] = deque()
        # Paused for migration: the request and the blocks it holds here (the request's own block table is
        # replaced by the destination's on commit, so the source keeps its copy to free on release).
        self.paused: dict[str, tuple[SimSeq, list[int]]] = {}
        self.waiting_demand = 0  # blocks the queued requests need to start
        self.num_high = 0
        self.num_high_waiting = 0  # with priority scheduling they are waiting[0 : num_high_waiting]
        self.num_preempted_waiting = 0
        self._waiting_loads: tuple[RequestLoad, ...] | None = None  # the queue's RequestLoads, until it changes

    def demand(self, seq: SimSeq) -> int:
        """Blocks ``seq`` needs to (re)start: KV for every token it has."""
        return -(-seq.total // self.block_size)

    # -- membership -----------------------------------------------------------------------------------
    def track(self, seq: SimSeq) -> None:
        self.seqs[seq.request.request_id] = seq
        if seq.high:
            self.num_high += 1

    def forget(self, seq: SimSeq) -> None:
        del self.seqs[seq.request.request_id]
        if seq.high:
            self.num_high -= 1

    def held(self, request_id: str, where: str) -> SimSeq:
        """A running or paused request (KeyError naming instance ``where`` otherwise)."""
        seq = self.seqs.get(request_id)
        if seq is None or not (seq.active or request_id in self.paused):
            raise KeyError(f"request {request_id} is not running on instance {where}")
        return seq

    def take_waiting(self, request_id: str, where: str) -> SimSeq:
        """Out of the queue and out of this engine (KeyError naming ``where`` if it is not queued)."""
        seq = self.seqs.get(request_id)
        if seq is None or seq.active or request_id in self.paused:
            raise KeyError(f"request {request_id} is not queued on instance {where}")
        self.remove_waiting(seq)
        self.forget(seq)
        return seq

    def remove(self, request_id: str) -> SimSeq | None:
        """Out of this engine wherever it is (queued, running, paused), its blocks freed; None if unknown."""
        seq = self.seqs.get(request_id)
        if seq is None:
            return None
        if request_id in self.paused:
            self.drop_paused(request_id, still_ours=True)
            return seq
        if seq.active:
            self.leave_running(seq)
        else:
            self.remove_waiting(seq)
        self.release(seq)
        self.forget(seq)
        return seq

    # -- the queue ------------------------------------------------------------------------------------
    def enqueue(self, seq: SimSeq, front: bool = False) -> None:
        """Queue ``seq``: at the head of its class if ``front`` (preempted), else in arrival order (a request
        moved here from another queue keeps its FCFS place). With priority scheduling the high-priority
        requests form the front of the queue."""
        waiting = self.waiting
        if self.priority_scheduling:
            lo, hi = (0, self.num_high_waiting) if seq.high else (self.num_high_waiting, len(waiting))
        else:
            lo, hi = 0, len(waiting)
        if front:
            idx = lo
        else:
            idx = hi
            arrival = seq.request.arrival_time
            while idx > lo and waiting[idx - 1].request.arrival_time > arrival:
                idx -= 1
        if idx == len(waiting):
            waiting.append(seq)
        elif idx == 0:
            waiting.appendleft(seq)
        else:
            waiting.insert(idx, seq)
        self.waiting_demand += self.demand(seq)
        self._waiting_loads = None
        if seq.high:
            self.num_high_waiting += 1
        if seq.preempted_at is not None:
            self.num_preempted_waiting += 1

    def _left_queue(self, seq: SimSeq) -> None:
        self.waiting_demand -= self.demand(seq)
        self._waiting_loads = None
        if seq.high:
            self.num_high_waiting -= 1
        if seq.preempted_at is not None:
            self.num_preempted_waiting -= 1

    def pop_head(self) -> SimSeq:
        seq = self.waiting.popleft()
        self._left_queue(seq)
        return seq

    def remove_waiting(self, seq: SimSeq) -> None:
        self.waiting.remove(seq)
        self._left_queue(seq)

    # -- the batch and its blocks ----------------------------------------------------------------------
    def join_running(self, seq: SimSeq) -> None:
        """Into the running batch, kept in the order of vLLM's scheduling policy (which sorts it every step):
        arrival, or with priority scheduling the high-priority requests first, each class by arrival."""
        seq.active = True
        bisect.insort(self.running, seq, key=_priority_then_arrival if self.priority_scheduling else _arrival)

    def leave_running(self, seq: SimSeq) -> None:
        self.running.remove(seq)
        seq.active = False

    def give(self, seq: SimSeq, n: int) -> None:
        """``n`` more blocks for ``seq`` (the caller checked that they are free)."""
        free = self.free
        seq.block_ids.extend([free.pop() for _ in range(n)])
        seq.capacity += n * self.block_size

    def release(self, seq: SimSeq) -> None:
        """Free all of ``seq``'s blocks."""
        self.free.extend(seq.block_ids)
        seq.block_ids = []
        seq.capacity = 0

    # -- migration ------------------------------------------------------------------------------------
    def pause(self, seq: SimSeq) -> None:
        """Out of the batch, keeping its blocks until the migration commits (release) or fails (resume)."""
        self.leave_running(seq)
        self.paused[seq.request.request_id] = (seq, seq.block_ids)

    def resume(self, request_id: str) -> SimSeq:
        seq, blocks = self.paused.pop(request_id)
        seq.block_ids, seq.capacity = blocks, len(blocks) * self.block_size
        self.join_running(seq)
        return seq

    def drop_paused(self, request_id: str, still_ours: bool) -> SimSeq:
        """Free a paused request's blocks here (it moved); ``still_ours``: no other engine adopted its state."""
        seq, blocks = self.paused.pop(request_id)
        self.free.extend(blocks)
        if still_ours:
            seq.block_ids, seq.capacity = [], 0
        self.forget(seq)
        return seq

    def reserve(self, n: int, watermark: int) -> list[int] | None:
        if n < 0 or len(self.free) - n < watermark:
            return None
        return [self.free.pop() for _ in range(n)]

    def unreserve(self, block_ids: list[int]) -> None:
        self.free.extend(block_ids)

    def adopt(self, seq: SimSeq, block_ids: list[int]) -> None:
        """A request that migrated in runs here on reserved blocks."""
        seq.block_ids = list(block_ids)
        seq.capacity = len(block_ids) * self.block_size
        self.track(seq)
        self.join_running(seq)

    # -- load reports ---------------------------------------------------------------------------------
    def request_loads(self) -> tuple[tuple[RequestLoad, ...], tuple[RequestLoad, ...]]:
        """(running + paused, queued) as RequestLoads, reusing each request's last one until its blocks (or
        state) change: ``num_tokens`` of a running request is as of its latest block."""
        cached = _cached_load
        running = tuple([cached(s, len(s.block_ids), False) for s in self.running]
                        + [cached(s, len(b), True) for s, b in self.paused.values()])
        if self._waiting_loads is None:
            self._waiting_loads = tuple(cached(s, self.demand(s), False) for s in self.waiting)
        return running, self._waiting_loads


def _cached_load(s: SimSeq, blocks: int, migrating: bool) -> RequestLoad:
    rl = s.load_cache
    preempted = s.preempted_at is not None
    if rl is None or rl.blocks != blocks or rl.migrating != migrating or rl.preempted != preempted:
        r = s.request
        rl = s.load_cache = RequestLoad(r.request_id, blocks, r.priority, s.total, r.arrival_time,
                                        preempted=preempted, migrating=migrating)
    return rl
