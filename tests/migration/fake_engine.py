"""A tiny deterministic paged-KV engine implementing the EngineBackend protocol, for protocol tests.

Its "KV" of a token is the token id itself (plus a position term), written into paged blocks, and the next
token is a function of the *whole KV content* and the position: a block lost or corrupted by a migration
changes every later token, so comparing outputs with an unmigrated run really checks the copy.
"""

from __future__ import annotations

import threading
import time
from typing import Sequence

import torch

from llumnix_dask.engine.base import MigrationState, StepOutput
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.request import Request, RequestStatus

VOCAB = 997


class FakeEngine:
    def __init__(
        self, instance_id: str = "fake", num_blocks: int = 64, block_size: int = 4, width: int = 8,
        step_seconds: float = 0.0,
    ):
        # step_seconds stands in for a model's forward time (outside the lock, like a real engine's
        # GPU/CPU work), so that live stages overlap with decoding in threaded tests.
        self.step_seconds = step_seconds
        self.instance_id = instance_id
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.kv = torch.zeros(num_blocks, block_size, width)
        self._free = list(range(num_blocks - 1, -1, -1))
        self._lock = threading.RLock()
        self.waiting: list[Request] = []
        self.running: dict[str, Request] = {}
        self.paused: dict[str, Request] = {}
        self.tables: dict[str, list[int]] = {}
        self.kv_len: dict[str, int] = {}
        self.steps = 0

    # -- blocks ----------------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self._free)

    def _alloc(self, n: int) -> list[int] | None:
        if n > len(self._free):
            return None
        return [self._free.pop() for _ in range(n)]

    def _release(self, ids: Sequence[int]) -> None:
        for i in ids:
            assert i not in self._free, f"double free of block {i}"
            self._free.append(i)

    # -- serving ---------------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        with self._lock:
            if -(-(request.num_tokens + 1) // self.block_size) > self.num_blocks:
                raise ValueError("request longer than the whole cache")
            self.waiting.append(request)
            self.waiting.sort(key=lambda r: r.arrival_time)

    def abort(self, request_id: str) -> bool:
        with self._lock:
            for pool in (self.running, self.paused):
                req = pool.pop(request_id, None)
                if req is not None:
                    self._release(self.tables.pop(request_id))
                    self.kv_len.pop(request_id)
                    req.transition(RequestStatus.ABORTED, 0.0)
                    return True
            for req in self.waiting:
                if req.request_id == request_id:
                    self.waiting.remove(req)
                    req.transition(RequestStatus.ABORTED, 0.0)
                    return True
            return False

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.waiting or self.running)

    def get_request(self, request_id: str) -> Request | None:
        with self._lock:
            for pool in (self.running, self.paused):
                if request_id in pool:
                    return pool[request_id]
            return next((r for r in self.waiting if r.request_id == request_id), None)

    def load(self) -> InstanceLoad:
        with self._lock:
            running = tuple(RequestLoad(r.request_id, len(self.tables[r.request_id])) for r in self.running.values())
            return InstanceLoad.from_requests(
                self.instance_id, total_blocks=self.num_blocks, used_blocks=self.num_blocks - len(self._free),
                running=running, waiting=()
            )

    def _write_kv(self, rid: str, token: int, pos: int) -> bool:
        table = self.tables[rid]
        if pos // self.block_size >= len(table):
            new = self._alloc(1)
            if new is None:
                return False
            table.extend(new)
        self.kv[table[pos // self.block_size], pos % self.block_size] = float(token * 7 + pos)
        return True

    def _next_token(self, rid: str, req: Request) -> int:
        n = self.kv_len[rid]
        table = self.tables[rid]
        total = 0.0
        for p in range(n):
            total += float(self.kv[table[p // self.block_size], p % self.block_size, 0]) * (p + 1)
        seed = req.sampling.seed or 0
        return int(total + 13 * n + seed) % VOCAB

    def preempt(self, request_id: str) -> None:
        """Test hook: the engine ran out of blocks and sent this request back to the queue."""
        with self._lock:
            req = self.running.pop(request_id)
            self._release(self.tables.pop(request_id))
            self.kv_len.pop(request_id)
            req.transition(RequestStatus.WAITING, 0.0, "preempted")
            self.waiting.insert(0, req)

    def step(self) -> list[StepOutput]:
        if self.step_seconds:
            time.sleep(self.step_seconds)
        with self._lock:
            self.steps += 1
            while self.waiting:
                req = self.waiting[0]
                ids = self._alloc(-(-req.num_tokens // self.block_size))
                if ids is None:
                    break
                self.waiting.pop(0)
                self.tables[req.request_id] = ids
                self.kv_len[req.request_id] = 0
                req.transition(RequestStatus.RUNNING, 0.0)
                self.running[req.request_id] = req
            outs = []
            for rid, req in list(self.running.items()):
                tokens = req.all_token_ids
                while self.kv_len[rid] < len(tokens):
                    if not self._write_kv(rid, tokens[self.kv_len[rid]], self.kv_len[rid]):
                        self.preempt(rid)
                        break
                    self.kv_len[rid] += 1
                if rid not in self.running:
                    continue
                tok = self._next_token(rid, req)
                req.append_token(tok, float(self.steps))
                done = req.num_output_tokens >= req.sampling.max_tokens
                outs.append(StepOutput(rid, [tok], finished=done, finish_reason="length" if done else None))
                if done:
                    req.transition(RequestStatus.FINISHED, 0.0)
                    del self.running[rid]
                    self._release(self.tables.pop(rid))
                    self.kv_len.pop(rid)
            return outs

    # -- migration: source -----------------------------------------------------------------------
    def request_blocks(self, request_id: str) -> list[int]:
        with self._lock:
            if request_id not in self.running:
                raise KeyError(request_id)
            return list(self.tables[request_id])

    def num_kv_tokens(self, request_id: str) -> int:
        with self._lock:
            return self.kv_len.get(request_id, 0)

    def export_blocks(self, block_ids: Sequence[int]) -> torch.Tensor:
        with self._lock:
            return self.kv.index_select(0, torch.as_tensor(list(block_ids), dtype=torch.long))

    def pause(self, request_id: str) -> MigrationState:
        with self._lock:
            if request_id not in self.running:
                raise KeyError(request_id)
            req = self.running.pop(request_id)
            req.transition(RequestStatus.MIGRATING, 0.0)
            self.paused[request_id] = req
            return MigrationState(req, self.kv_len[request_id], list(self.tables[request_id]))

    def resume(self, request_id: str) -> None:
        with self._lock:
            req = self.paused.pop(request_id)
            req.transition(RequestStatus.RUNNING, 0.0)
            self.running[request_id] = req

    def release(self, request_id: str) -> None:
        with self._lock:
            self.paused.pop(request_id)
            self._release(self.tables.pop(request_id))
            self.kv_len.pop(request_id)

    def take_waiting(self, request_id: str) -> Request:
        with self._lock:
            for req in self.waiting:
                if req.request_id == request_id:
                    self.waiting.remove(req)
                    return req
            raise KeyError(request_id)

    # -- migration: destination ------------------------------------------------------------------
    def reserve_blocks(self, n: int, watermark: int = 0) -> list[int] | None:
        with self._lock:
            if len(self._free) - n < watermark:
                return None
            return self._alloc(n)

    def import_blocks(self, block_ids: Sequence[int], buffer: torch.Tensor) -> None:
        with self._lock:
            self.kv.index_copy_(0, torch.as_tensor(list(block_ids), dtype=torch.long), buffer)

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        with self._lock:
            self._release(block_ids)

    def commit_migrated(self, state: MigrationState, block_ids: Sequence[int]) -> None:
        with self._lock:
            req = state.request
            rid = req.request_id
            req.transition(RequestStatus.RUNNING, 0.0, "migrated in")
            self.tables[rid] = list(block_ids)
            self.kv_len[rid] = state.num_kv_tokens
            self.running[rid] = req
