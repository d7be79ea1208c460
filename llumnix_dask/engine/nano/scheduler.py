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
from dataclasses import dataclass

from llumnix_dask.engine.nano.blocks import NanoBlocks, RequestState
from llumnix_dask.request import RequestStatus


@dataclass
class ScheduledStep:
    chunks: list[tuple[RequestState, int]]  # (sequence, tokens to compute); one-token chunks first
    preempted: list[RequestState]


class Scheduler:
    """FCFS queue + running batch over the engine's blocks. The engine's lock guards every call."""

    def __init__(self, blocks: NanoBlocks, max_batch_size: int, max_batched_tokens: int) -> None:
        self.blocks = blocks
        self.max_batch_size = max_batch_size
        self.max_batched_tokens = max_batched_tokens
        self.waiting: list[RequestState] = []  # sorted by key
        self.running: list[RequestState] = []  # sorted by key: the last one is the youngest
        self.num_preemptions = 0
        self._order = itertools.count()

    def new_order(self) -> int:
        return next(self._order)

    def enqueue(self, seq: RequestState) -> None:
        bisect.insort(self.waiting, seq, key=lambda s: s.key)

    def add_running(self, seq: RequestState) -> None:
        bisect.insort(self.running, seq, key=lambda s: s.key)

    def remove(self, seq: RequestState) -> None:
        """Take a sequence out of the queue or the batch (its blocks stay with it)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    def demand(self, seq: RequestState) -> int:
        """Blocks a queued request needs to start (KV for every token it has so far)."""
        return self.blocks.blocks_for(seq.request.num_tokens)

    def _preempt(self, seq: RequestState, now: float) -> None:
        self.running.remove(seq)
        self.blocks.release(seq)
        seq.num_computed = 0
        seq.preempted = True
        seq.request.transition(RequestStatus.WAITING, now, "preempted")
        self.num_preemptions += 1
        self.enqueue(seq)

    def schedule(self, now: float) -> ScheduledStep:
        budget = self.max_batched_tokens
        chunks: list[tuple[RequestState, int]] = []
        preempted: list[RequestState] = []
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.request.num_tokens - seq.num_computed, budget)
            fits = True
            while fits and not self.blocks.grow(seq, seq.num_computed + n):
                victim = self.running[-1]  # the youngest; it may be this request itself
                self._preempt(victim, now)
                preempted.append(victim)
                fits = victim is not seq
            if not fits:
                break
            chunks.append((seq, n))
            budget -= n
            i += 1

        # No admissions in a step that had to preempt: the freed blocks would be fought over again.
        while not preempted and self.waiting and budget > 0 and len(self.running) < self.max_batch_size:
            seq = self.waiting[0]
            n = min(seq.request.num_tokens - seq.num_computed, budget)
            if not self.blocks.grow(seq, seq.num_computed + n):
                break
            self.waiting.pop(0)
            seq.request.transition(RequestStatus.RUNNING, now, "recompute" if seq.preempted else "scheduled")
            self.add_running(seq)
            chunks.append((seq, n))
            budget -= n
        chunks.sort(key=lambda c: c[1] > 1)
        return ScheduledStep(chunks, preempted)
