"""Live migration in the simulator: the paper's multi-stage copy, modelled in time.

Stage k copies the blocks the request wrote since stage k-1 while it keeps decoding on the source
(``migration_stage_overhead_ms`` + ``migration_ms_per_block`` per block). When the increment is at most
``last_stage_max_blocks`` or ``max_stages`` stages have run, the source pauses the request, copies the rest
and both sides commit (the downtime: ``migration_commit_ms`` + the last increment). Before every stage the
destination reserves blocks or refuses (the first stage must leave ``dst_watermark_blocks`` free); a refusal,
or the request finishing / being preempted on the source meanwhile, aborts the migration and frees every
reserved block. A queued request has no KV: it moves to the destination's queue at once.

The engines' migration methods (``reserve_blocks``, ``pause``, ``commit_migrated``, ``release``...) are the
same ones the real migration protocol calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from llumnix_dask.config import LatencyModel, MigrationConfig, PolicyConfig
from llumnix_dask.engine.sim import SimEngine, SimSeq
from llumnix_dask.policy.migration import MigrationPair, select_request


@dataclass
class LiveMigration:
    """One migration in flight."""

    src: SimEngine
    dst: SimEngine
    request_id: str
    seq: SimSeq
    started: float
    stage: int = 0
    copied_blocks: int = 0
    reserved: list[int] = field(default_factory=list)
    state: object = None  # MigrationState once paused
    preemptions_at_start: int = 0


@dataclass
class MigrationStats:
    started: int = 0  # running requests whose first stage began
    committed: int = 0
    queued_moves: int = 0  # queued requests moved (no KV to copy)
    refused: int = 0  # destination could not reserve blocks
    aborted: int = 0  # request finished or was preempted on the source mid-way
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
    """Runs migrations between SimEngines; ``schedule(time, callback)`` books a future event and
    ``kick(engine, now)`` restarts an idle engine whose state changed."""

    def __init__(
        self,
        latency: LatencyModel,
        migration: MigrationConfig,
        policy: PolicyConfig,
        schedule: Callable[[float, Callable[[float], None]], None],
        kick: Callable[[SimEngine, float], None],
    ) -> None:
        self.latency = latency
        self.cfg = migration
        self.policy = policy
        self.schedule = schedule
        self.kick = kick
        self.stats = MigrationStats()

    def _stage_time(self, blocks: int) -> float:
        return (self.latency.migration_stage_overhead_ms + self.latency.migration_ms_per_block * blocks) / 1000.0

    def start(self, pair: MigrationPair, src: SimEngine, dst: SimEngine, now: float) -> None:
        """Pick a request on ``src`` (request selection policy) and begin moving it to ``dst``."""
        choice = select_request(src.load(detailed=True), dst.load(), self.policy)
        if choice is None:
            self.stats.nothing_to_move += 1
            return
        seq = src._seqs[choice.request_id]
        if not seq.active:  # queued: no KV, it simply changes queue
            request = src.take_waiting(choice.request_id)
            dst.add_request(request)
            self.stats.queued_moves += 1
            self.kick(dst, now)
            self.kick(src, now)
            return
        if seq.generated == 0:  # admitted but its prefill step has not ended: no KV to copy yet
            self.stats.nothing_to_move += 1
            return
        blocks = len(seq.block_ids)
        reserved = dst.reserve_blocks(blocks, self.cfg.dst_watermark_blocks)
        if reserved is None:
            self.stats.refused += 1
            return
        mig = LiveMigration(src, dst, choice.request_id, seq, now, stage=1, copied_blocks=blocks, reserved=reserved,
                            preemptions_at_start=seq.request.num_preemptions)
        src.migrations_in_flight += 1
        dst.migrations_in_flight += 1
        self.stats.started += 1
        self.schedule(now + self._stage_time(blocks), lambda t: self._stage_done(mig, t))

    def _end(self, mig: LiveMigration, now: float) -> None:
        mig.src.migrations_in_flight -= 1
        mig.dst.migrations_in_flight -= 1
        self.kick(mig.src, now)
        self.kick(mig.dst, now)

    def _abort(self, mig: LiveMigration, now: float) -> None:
        mig.dst.free_blocks(mig.reserved)
        mig.reserved = []
        self._end(mig, now)

    def _stage_done(self, mig: LiveMigration, now: float) -> None:
        seq = mig.seq
        if (not seq.active or seq.owner is not mig.src or mig.src._seqs.get(mig.request_id) is not seq
                or seq.request.num_preemptions != mig.preemptions_at_start):
            self.stats.aborted += 1  # finished, preempted or aborted while its blocks were copied
            self._abort(mig, now)
            return
        increment = len(seq.block_ids) - mig.copied_blocks
        last = increment <= self.cfg.last_stage_max_blocks or mig.stage >= self.cfg.max_stages
        if last:
            mig.src.now = now
            mig.state = mig.src.pause(mig.request_id)
            increment = len(seq.block_ids) - mig.copied_blocks
        more = mig.dst.reserve_blocks(max(0, increment), 0 if last else self.cfg.dst_watermark_blocks)
        if more is None:
            self.stats.refused += 1
            if last:
                mig.src.resume(mig.request_id)
                self.kick(mig.src, now)
            self._abort(mig, now)
            return
        mig.reserved += more
        mig.copied_blocks += max(0, increment)
        mig.stage += 1
        if last:
            downtime = (self.latency.migration_commit_ms + self.latency.migration_ms_per_block * increment) / 1000.0
            self.stats.downtime_s.append(downtime)
            self.schedule(now + downtime, lambda t: self._commit(mig, t))
        else:
            self.schedule(now + self._stage_time(increment), lambda t: self._stage_done(mig, t))

    def _commit(self, mig: LiveMigration, now: float) -> None:
        blocks = mig.reserved[: len(mig.seq.block_ids)]
        extra = mig.reserved[len(blocks):]
        if extra:  # blocks reserved for a stage the paused request no longer needs
            mig.dst.free_blocks(extra)
        mig.src.release(mig.request_id)
        mig.dst.now = now
        mig.dst.commit_migrated(mig.state, blocks)  # type: ignore[arg-type]
        mig.reserved = []
        self.stats.committed += 1
        self.stats.duration_s.append(now - mig.started)
        self._end(mig, now)
