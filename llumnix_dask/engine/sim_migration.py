"""The migration side of :class:`~llumnix_dask.engine.sim.SimEngine`: the source methods (pause, resume,
release, take a queued request) and the destination methods (reserve, import, commit) that the simulator's
migration model and the real migration protocol call. A mixin over the engine's queues and block lists.
"""

from __future__ import annotations

from typing import Any, Sequence

from llumnix_dask.engine.base import MigrationState
from llumnix_dask.engine.sim_seq import SimSeq
from llumnix_dask.request import Request, RequestStatus


class SimMigrationMixin:
    """Migration methods of SimEngine (see the module docstring); uses the engine's private state."""

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
            self._join_running(seq)
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
            self._join_running(seq)
            request.instance_id = self.instance_id
            request.num_migrations += 1
            request.transition(RequestStatus.RUNNING, self.now, f"migrated to {self.instance_id}")
