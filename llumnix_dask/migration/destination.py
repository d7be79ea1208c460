"""Destination side of live migration: one session per migration id, pre-allocations and their expiry.

The destination is passive; it answers the source's handshake messages (in any transport)::

    reserve(mid, rid, n)        -> True (n more blocks pre-allocated) | False (refused)
    receive_blocks(mid, start, counts, buffers)  scatter into pre-allocated blocks start, start+1, ...
    commit(mid, state)          the request joins this engine's batch with all pre-allocated blocks
    abort(mid, reason)          free the pre-allocation (or drop the request if the commit ack was lost)
    enqueue(mid, request)       a queued request joins this engine's queue in arrival order

The first ``reserve`` of a migration must leave ``dst_watermark_blocks`` free, so a migration never
pushes the destination into preempting its own requests. A session the source has not talked to for
``dst_timeout_s`` (source dead or partitioned) is dropped and its blocks freed by :meth:`expire_silent`,
which a reaper thread (:meth:`start_reaper`) or the host's periodic callback calls. The clock is
injectable so expiry is testable without waiting.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from llumnix_dask.config import MigrationConfig
from llumnix_dask.engine.base import EngineBackend, MigrationState
from llumnix_dask.request import Request

logger = logging.getLogger(__name__)

# How many committed migration ids to remember, so a late abort (lost commit ack) can still undo one.
_COMMITTED_MEMORY = 1024


class UnknownMigration(KeyError):
    """A message for a migration this destination does not hold (never started, expired or aborted)."""


@dataclass
class _Session:
    migration_id: str
    request_id: str
    block_ids: list[int] = field(default_factory=list)
    filled: int = 0  # blocks received so far, counted to check the commit
    last_heard: float = 0.0
    importing: int = 0  # copies into block_ids in progress
    dropped: bool = False  # aborted / expired while a copy was running: free when it ends


@dataclass(frozen=True)
class DestinationEvent:
    time: float
    migration_id: str
    request_id: str
    event: str  # "reserved", "refused", "committed", "aborted:<why>", "expired", "enqueued"
    blocks: int = 0


class MigrationDestination:
    """Answers migration handshakes for one engine; thread-safe (Dask handlers and a reaper thread).

    >>> dst = MigrationDestination(engine, MigrationConfig())            # doctest: +SKIP
    >>> register_migration_handlers(worker, dst)                         # doctest: +SKIP
    """

    def __init__(
        self,
        engine: EngineBackend,
        config: MigrationConfig | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.engine = engine
        self.config = config or MigrationConfig()
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, _Session] = {}
        self._committed: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._closed: collections.OrderedDict[str, None] = collections.OrderedDict()  # aborted / expired
        self.events: collections.deque[DestinationEvent] = collections.deque(maxlen=1000)
        self._reaper: threading.Thread | None = None
        self._stop = threading.Event()

    # -- introspection ---------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(getattr(self.engine, "instance_id", "?"))

    @property
    def reserved_blocks(self) -> int:
        """Blocks pre-allocated for migrations in flight."""
        with self._lock:
            return sum(len(s.block_ids) for s in self._sessions.values())

    @property
    def active_migrations(self) -> list[str]:
        with self._lock:
            return list(self._sessions)

    def _log(self, s: _Session | None, mid: str, rid: str, event: str, blocks: int = 0) -> None:
        self.events.append(DestinationEvent(self.clock(), mid, rid, event, blocks))
        logger.debug("migration %s (%s) on %s: %s %d blocks", mid, rid, self.name, event, blocks)

    def _session(self, mid: str) -> _Session:
        s = self._sessions.get(mid)
        if s is None:
            raise UnknownMigration(f"migration {mid!r} is not in progress on {self.name} (expired or aborted)")
        s.last_heard = self.clock()
        return s

    # -- handshake -------------------------------------------------------------------------------
    def reserve(self, migration_id: str, request_id: str, num_blocks: int) -> bool:
        """Pre-allocate ``num_blocks`` more blocks; the first reservation keeps the watermark free."""
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks: must be an integer >= 0, got {num_blocks!r}")
        with self._lock:
            first = migration_id not in self._sessions
            if first and (migration_id in self._committed or migration_id in self._closed):
                # A late stage of a migration that expired or ended here: never reopen it half-filled.
                raise UnknownMigration(f"migration {migration_id!r} already ended on {self.name}")
            watermark = self.config.dst_watermark_blocks if first else 0
            ids = self.engine.reserve_blocks(num_blocks, watermark) if num_blocks or first else []
            if ids is None:
                self._log(None, migration_id, request_id, "refused", num_blocks)
                return False
            ids = list(ids)
            if first:
                self._sessions[migration_id] = _Session(migration_id, request_id, last_heard=self.clock())
            s = self._session(migration_id)
            s.block_ids.extend(ids)
            self._log(s, migration_id, request_id, "reserved", len(ids))
            return True

    def receive_blocks(
        self, migration_id: str, start: int | None, counts: Sequence[int], buffers: Sequence[Any]
    ) -> None:
        """Scatter ``export_blocks`` buffers (``counts[i]`` blocks each, in order) into this migration's
        pre-allocated blocks ``start, start+1, ...`` (``start=None``: the last ones reserved)."""
        counts = [int(c) for c in counts]
        if len(counts) != len(buffers) or any(c < 1 for c in counts):
            raise ValueError(f"migration {migration_id}: {len(buffers)} buffers for block counts {counts}")
        total = sum(counts)
        with self._lock:
            s = self._session(migration_id)
            if start is None:
                start = len(s.block_ids) - total
            if start < 0 or start + total > len(s.block_ids):
                raise ValueError(
                    f"migration {migration_id}: blocks {start}..{start + total - 1} were not reserved "
                    f"(only {len(s.block_ids)})"
                )
            ids = s.block_ids[start : start + total]
            s.importing += 1
        # The copy runs outside the lock (it is the slow part); an abort meanwhile defers the free to us,
        # so the blocks cannot be handed to another request while we still write into them.
        try:
            offset = 0
            for count, buffer in zip(counts, buffers):
                self.engine.import_blocks(ids[offset : offset + count], buffer)
                offset += count
        finally:
            with self._lock:
                s.importing -= 1
                s.filled += total
                s.last_heard = self.clock()
                free_now = s.dropped and s.importing == 0
            if free_now:
                self.engine.free_blocks(s.block_ids)
        if s.dropped:
            raise UnknownMigration(f"migration {migration_id!r} was aborted during the copy")

    def commit(
        self, migration_id: str, state: MigrationState, counts: Sequence[int] = (), buffers: Sequence[Any] = ()
    ) -> bool:
        """Adopt the request with every block received; it decodes on from the next engine step.

        ``counts`` / ``buffers``: the last blocks, reserved and scattered first (the source's paused stage
        in one message). False if there is no room for them (the request is not adopted).
        """
        tail = sum(int(c) for c in counts)
        if tail or migration_id not in self._sessions:
            if not self.reserve(migration_id, state.request.request_id, tail):
                return False
            if tail:
                self.receive_blocks(migration_id, None, counts, buffers)
        with self._lock:
            s = self._session(migration_id)
            needed = -(-state.num_kv_tokens // self.engine.block_size)
            if len(s.block_ids) != needed or s.filled != needed:
                raise ValueError(
                    f"migration {migration_id}: {state.num_kv_tokens} KV tokens need {needed} blocks, "
                    f"{len(s.block_ids)} reserved and {s.filled} received"
                )
            self.engine.commit_migrated(state, list(s.block_ids))
            del self._sessions[migration_id]
            self._remember(migration_id, state.request.request_id)
            self._log(s, migration_id, s.request_id, "committed", needed)
        return True

    def abort(self, migration_id: str, reason: str = "") -> bool:
        """Free this migration's pre-allocation; if it was committed (ack lost), drop the request. False if unknown."""
        with self._lock:
            s = self._sessions.pop(migration_id, None)
            if s is not None:
                self._drop(s)
                self._log(s, migration_id, s.request_id, f"aborted:{reason}", len(s.block_ids))
                return True
            rid = self._committed.pop(migration_id, None)
        if rid is not None:
            self.engine.abort(rid)
            self._log(None, migration_id, rid, f"uncommitted:{reason}")
            return True
        return False

    def _drop(self, s: _Session) -> None:
        # Caller holds the lock and has removed s from the sessions.
        s.dropped = True
        self._closed[s.migration_id] = None
        while len(self._closed) > _COMMITTED_MEMORY:
            self._closed.popitem(last=False)
        if s.importing == 0:
            self.engine.free_blocks(s.block_ids)

    def enqueue(self, migration_id: str, request: Request) -> bool:
        """A never-started request joins this engine's queue (in arrival order); False if it cannot run here."""
        try:
            self.engine.add_request(request)
        except ValueError:
            self._log(None, migration_id, request.request_id, "refused")
            return False
        with self._lock:
            self._remember(migration_id, request.request_id)
        self._log(None, migration_id, request.request_id, "enqueued")
        return True

    def _remember(self, migration_id: str, request_id: str) -> None:
        # Caller holds the lock. A late abort of this migration (the source never saw our ack) drops it.
        self._committed[migration_id] = request_id
        while len(self._committed) > _COMMITTED_MEMORY:
            self._committed.popitem(last=False)

    # -- source silence ------------------------------------------------------------------------------
    def expire_silent(self, now: float | None = None) -> list[str]:
        """Drop the sessions whose source has been silent for ``dst_timeout_s``; returns their ids."""
        now = self.clock() if now is None else now
        expired = []
        with self._lock:
            for mid, s in list(self._sessions.items()):
                if now - s.last_heard >= self.config.dst_timeout_s:
                    del self._sessions[mid]
                    self._drop(s)
                    self._log(s, mid, s.request_id, "expired", len(s.block_ids))
                    expired.append(mid)
        if expired:
            logger.warning("%s: source silent for %.1fs, freed migrations %s", self.name, self.config.dst_timeout_s, expired)
        return expired

    def start_reaper(self, interval_s: float | None = None) -> None:
        """Call :meth:`expire_silent` from a daemon thread every ``interval_s`` (default dst_timeout_s / 4)."""
        if self._reaper is not None:
            return
        interval = interval_s if interval_s is not None else self.config.dst_timeout_s / 4

        def loop() -> None:
            while not self._stop.wait(interval):
                self.expire_silent()

        self._reaper = threading.Thread(target=loop, name=f"migration-reaper-{self.name}", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        """Stop the reaper and free every pre-allocation."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join()
            self._reaper = None
        with self._lock:
            sessions, self._sessions = self._sessions, {}
            for s in sessions.values():
                self._drop(s)

