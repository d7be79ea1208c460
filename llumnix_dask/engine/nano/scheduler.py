"""Continuous-batching scheduler: which tokens of which requests run in the next forward pass.

Each step, oldest first, every running request gets its next token (decode) or its next prompt chunk;
if the KV blocks run out, the youngest running request is preempted by recompute (its blocks are freed
and it goes back to the queue, to be prefilled again later, prompt and output together). Then queued
requests are admitted in FCFS order (by arrival time) while the batch, the token budget
(``max_batched_tokens``, over which a prompt is prefilled in chunks) and the free blocks allow. The head
of the queue blocks the ones behind it (no skipping), as in the paper's engine.
"""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass, field
from typing import Any

from llumnix_dask.engine.nano.kv_cache import BlockManager
from llumnix_dask.request import Request, RequestStatus


@dataclass(eq=False)
class Sequence:
    """The engine-side state of one request."""

    request: Request
    seed: int
    detok: Any  # IncrementalDetokenizer
    block_ids: list[int] = field(default_factory=list)
    num_computed: int = 0  # tokens whose KV is in block_ids
    preempted: bool = False  # queued again after losing its blocks
    order: int = 0  # tie-break for equal arrival times (FCFS by arrival, then by add order)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def key(self) -> tuple[float, int]:
        return (self.request.arrival_time, self.order)

    def tokens(self, start: int, end: int) -> list[int]:
        """all_token_ids[start:end] without building the whole list."""
        req = self.request
        n = req.num_prompt_tokens
        if start >= n:
            return req.output_token_ids[start - n : end - n]
        if end <= n:
            return req.prompt_token_ids[start:end]
        return req.prompt_token_ids[start:] + req.output_token_ids[: end - n]


@dataclass
class ScheduledStep:
    chunks: list[tuple[Sequence, int]]  # (sequence, tokens to compute); one-token chunks first
    preempted: list[Sequence]


class Scheduler:
    """FCFS queue + running batch over a block manager. The engine's lock guards every call."""

    def __init__(self, blocks: BlockManager, block_size: int, max_batch_size: int, max_batched_tokens: int) -> None:
        self.blocks = blocks
        self.block_size = block_size
        self.max_batch_size = max_batch_size
        self.max_batched_tokens = max_batched_tokens
        self.waiting: list[Sequence] = []  # sorted by key
        self.running: list[Sequence] = []  # sorted by key: the last one is the youngest
        self.num_preemptions = 0
        self._order = itertools.count()

    def _blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def new_order(self) -> int:
        return next(self._order)

    def enqueue(self, seq: Sequence) -> None:
        bisect.insort(self.waiting, seq, key=lambda s: s.key)

    def add_running(self, seq: Sequence) -> None:
        bisect.insort(self.running, seq, key=lambda s: s.key)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out of the queue or the batch (its blocks stay with it)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def demand(self, seq: Sequence) -> int:
        """Blocks a queued request needs to start (KV for every token it has so far)."""
        return self._blocks_for(seq.request.num_tokens)

    def _preempt(self, seq: Sequence, now: float) -> None:
        self.running.remove(seq)
        self.blocks.free(seq.block_ids)
        seq.block_ids = []
        seq.num_computed = 0
        seq.preempted = True
        seq.request.transition(RequestStatus.WAITING, now, "preempted")
        self.num_preemptions += 1
        self.enqueue(seq)

    def schedule(self, now: float) -> ScheduledStep:
        budget = self.max_batched_tokens
        chunks: list[tuple[Sequence, int]] = []
        preempted: list[Sequence] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.request.num_tokens - seq.num_computed, budget)
            need = self._blocks_for(seq.num_computed + n) - len(seq.block_ids)
            while need > self.blocks.num_free and self.running[-1] is not seq:
                victim = self.running[-1]
                self._preempt(victim, now)
                preempted.append(victim)
            if need > self.blocks.num_free:  # it is the youngest itself
                self._preempt(seq, now)
                preempted.append(seq)
                break
            seq.block_ids.extend(self.blocks.allocate(need) or [])
            chunks.append((seq, n))
            budget -= n
            i += 1

        # No admissions in a step that had to preempt: the freed blocks would be fought over again.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            n = min(seq.request.num_tokens - seq.num_computed, budget)
            need = self._blocks_for(seq.num_computed + n) - len(seq.block_ids)
            if need > self.blocks.num_free:
                break
            self.waiting.pop(0)
            seq.block_ids.extend(self.blocks.allocate(need) or [])
            seq.request.transition(RequestStatus.RUNNING, now, "recompute" if seq.preempted else "scheduled")
            self.add_running(seq)
            chunks.append((seq, n))
            budget -= n
        chunks.sort(key=lambda c: c[1] > 1)
        return ScheduledStep(chunks, preempted)
