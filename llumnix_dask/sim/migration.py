"""Live migration in the simulator: the migration protocol's stages, modelled in time.

The global scheduler plans a pair and the request (from the source's last load report; when a plan names none
the source picks it with the request-selection policy, as the worker plugin does); the stages follow the
protocol's own rule,
:func:`llumnix_dask.migration.source.live_stage_end`: a live stage copies the blocks completed since the
previous one while the request keeps decoding (``migration_stage_overhead_ms`` + ``migration_ms_per_block``
per block); the last stage pauses the request, copies the rest and commits (the downtime:
``migration_commit_ms`` + the last blocks). Each stage reserves its blocks on the destination first - the
first reservation keeps ``dst_watermark_blocks`` free - or the migration ends: refused at stage 1, aborted
later. It also aborts, freeing every reserved block, when the request finishes or is preempted on the source
meanwhile. A queued request has no KV: it moves to the destination's queue at once. Every outcome is
reported to the global scheduler with ``migration_finished``, as the worker plugin reports it.

The engines' migration methods (``reserve_blocks``, ``pause``, ``commit_migrated``, ``release``...) are the
ones the real migration protocol calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from llumnix_dask.config import MigrationConfig
from llumnix_dask.sim_config import LatencyModel
from llumnix_dask.engine.sim import SimEngine, SimSeq
from llumnix_dask.migration.source import live_stage_end
from llumnix_dask.policy.migration import select_request
from llumnix_dask.scheduler.core import GlobalScheduler, PlannedMigration


@dataclass
class LiveMigration:
    """One migration in flight."""

    src: SimEngine
    dst: SimEngine
    request_id: str
    seq: SimSeq
    started: float
    stage: int = 1
    sent: int = 0  # blocks already on the destination (a prefix of the request's block table)
    reserved: list[int] = field(default_factory=list)
    preemptions_at_start: int = 0


@dataclass
class MigrationStats:
    started: int = 0  # running requests whose first stage began
    committed: int = 0
    queued_moves: int = 0  # queued requests moved (no KV to copy)
    refused: int = 0  # the destination had no room at the first stage
    aborted: int = 0  # the request finished or was preempted mid-way, or a later stage found no room
    nothing_to_move: int = 0
    downtime_s: list[float] = field(default_factory=list)
    duration_s: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        n = len(self.downtime_s)
        return {
            "started": self.started,
            "committed": self.committed,
            "queued_moves": self.queued_moves,
            "refused": self.refused,
            "aborted": self.aborted,
            "nothing_to_move": self.nothing_to_move,
            "mean_downtime_ms": 1000 * sum(self.downtime_s) / n if n else None,
            "max_downtime_ms": 1000 * max(self.downtime_s) if n else None,
            "mean_duration_ms": 1000 * sum(self.duration_s) / n if n else None,
        }


class MigrationModel:
    """Runs planned migrations between SimEngines; ``schedule(time, callback)`` books a future event and
    ``kick(engine, now)`` restarts an idle engine whose state changed."""

    def __init__(
        self,
        latency: LatencyModel,
        migration: MigrationConfig,
        scheduler: GlobalScheduler,
        schedule: Callable[[float, Callable[[float], None]], None],
        kick: Callable[[SimEngine, float], None],
    ) -> None:
        self.latency = latency
        self.cfg = migration
        self.scheduler = scheduler
        self.schedule = schedule
        self.kick = kick
        self.stats = MigrationStats()

    def _stage_time(self, blocks: int) -> float:
        return (self.latency.migration_stage_overhead_ms + self.latency.migration_ms_per_block * blocks) / 1000.0

    def _finish(self, src: SimEngine, dst: SimEngine, rid: str | None, ok: bool, reason: str, now: float) -> None:
        self.scheduler.migration_finished(src.instance_id, dst.instance_id, rid, ok, reason)
        self.kick(src, now)
        self.kick(dst, now)

    def start(self, plan: PlannedMigration, src: SimEngine, dst: SimEngine, now: float) -> None:
        """Begin ``plan``: the source picks the request (unless the plan names one) and stage 1 starts."""
        rid = plan.request_id
        if rid is None:
            # The source's view of its own requests, the scheduler's (last reported) view of the destination.
            choice = select_request(src.load(detailed=True), plan.dst.load, self.scheduler.policy,
                                    self.cfg.dst_watermark_blocks)
            rid = None if choice is None else choice.request_id
            if choice is not None:
                self.scheduler.migration_request_chosen(plan, choice)
        seq = src.queues.seqs.get(rid) if rid is not None else None
        if seq is None or rid in src.queues.paused:
            self.stats.nothing_to_move += 1
            self._finish(src, dst, rid, False, "no request to migrate", now)
            return
        if not seq.active:  # queued: no KV, it simply changes queue
            dst.add_request(src.take_waiting(rid))
            seq.request.num_migrations += 1
            self.stats.queued_moves += 1
            self._finish(src, dst, rid, True, "queued request moved", now)
            return
        if seq.generated == 0:  # admitted, but its prefill step has not ended: no KV to copy yet
            self.stats.nothing_to_move += 1
            self._finish(src, dst, rid, False, "not started yet", now)
            return
        mig = LiveMigration(src, dst, rid, seq, now, preemptions_at_start=seq.request.num_preemptions)
        self._stage(mig, now)

    def _stage(self, mig: LiveMigration, now: float) -> None:
        bs = mig.src.block_size
        num_kv = mig.seq.total - 1
        first = mig.stage == 1
        watermark = self.cfg.dst_watermark_blocks if first else 0
        end = live_stage_end(mig.stage, num_kv, mig.sent, bs, self.cfg)
        if end is not None:  # live stage: the request keeps decoding while its completed blocks are copied
            blocks = mig.dst.reserve_blocks(end - mig.sent, watermark)
            if blocks is None:
                self._give_up(mig, now, refused=first)
                return
            if first:
                self.stats.started += 1
            mig.reserved += blocks
            self.schedule(now + self._stage_time(end - mig.sent), lambda t: self._stage_done(mig, end, t))
            return
        # Last stage: pause the request, copy the rest, commit.
        need = math.ceil(num_kv / bs) - mig.sent
        blocks = mig.dst.reserve_blocks(need, watermark)
        if blocks is None:
            self._give_up(mig, now, refused=first)
            return
        if first:
            self.stats.started += 1
        mig.reserved += blocks
        mig.src.now = now
        state = mig.src.pause(mig.request_id)
        downtime = (self.latency.migration_commit_ms + self.latency.migration_ms_per_block * need) / 1000.0
        self.stats.downtime_s.append(downtime)
        self.schedule(now + downtime, lambda t: self._commit(mig, state, t))

    def _give_up(self, mig: LiveMigration, now: float, refused: bool) -> None:
        mig.dst.free_blocks(mig.reserved)
        mig.reserved = []
        if refused:
            self.stats.refused += 1
        else:
            self.stats.aborted += 1
        self._finish(mig.src, mig.dst, mig.request_id, False, "refused" if refused else "aborted:dst-out-of-blocks",
                     now)

    def _stage_done(self, mig: LiveMigration, end: int, now: float) -> None:
        seq = mig.seq
        if (not seq.active or seq.owner is not mig.src or mig.src.queues.seqs.get(mig.request_id) is not seq
                or seq.request.num_preemptions != mig.preemptions_at_start):
            # Finished, preempted or aborted while its blocks were copied: free the destination's blocks.
            mig.dst.free_blocks(mig.reserved)
            mig.reserved = []
            self.stats.aborted += 1
            self._finish(mig.src, mig.dst, mig.request_id, False, "aborted:left the batch", now)
            return
        mig.sent = end
        mig.stage += 1
        self._stage(mig, now)

    def _commit(self, mig: LiveMigration, state, now: float) -> None:
        mig.src.release(mig.request_id)
        mig.dst.now = now
        mig.dst.commit_migrated(state, mig.reserved)
        mig.reserved = []
        self.stats.committed += 1
        self.stats.duration_s.append(now - mig.started)
        self._finish(mig.src, mig.dst, mig.request_id, True, "committed", now)
