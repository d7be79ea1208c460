"""Block bookkeeping of one vllm-backend engine: what vLLM's KV-cache manager holds, plus the blocks this
engine pre-allocated for incoming migrations. The one place that touches vLLM's block pool and block
tables (the seams are listed in :mod:`.compat`); the engine's lock guards every call.
"""

from __future__ import annotations

from typing import Any, Sequence

from llumnix_dask.engine.base import check_reserved


class VllmBlocks:
    def __init__(self, kv_cache_manager: Any) -> None:
        groups = kv_cache_manager.coordinator.single_type_managers
        if len(groups) != 1:
            raise ValueError("the vllm backend supports models with one KV-cache group (full attention)")
        self._manager = kv_cache_manager
        self._table = groups[0]  # the single group's per-request block lists
        self._pool = kv_cache_manager.block_pool
        self._reserved: dict[int, Any] = {}  # block id -> KVCacheBlock held for a migration in progress
        self.num_blocks = self._pool.num_gpu_blocks - 1  # block 0 is vLLM's null block, never handed out

    @property
    def num_free(self) -> int:
        return self._pool.get_num_free_blocks()

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_reserved(self) -> int:
        return len(self._reserved)

    def held_by(self, request_id: str) -> int:
        """Blocks in the request's table (0 for a request that holds none)."""
        return len(self._table.req_to_blocks.get(request_id, ()))

    def table(self, request_id: str) -> list[int]:
        """Block ids of the request, in token order."""
        return list(self._manager.get_block_ids(request_id)[0])

    # -- pre-allocation for incoming migrations --------------------------------------------------------
    def reserve(self, n: int, watermark: int = 0) -> list[int] | None:
        """n blocks taken from the pool (they count as used), or None if fewer than ``watermark`` would remain."""
        if self.num_free - n < watermark:
            return None
        blocks = self._pool.get_new_blocks(n)
        for block in blocks:
            self._reserved[block.block_id] = block
        return [b.block_id for b in blocks]

    def check_reserved(self, block_ids: Sequence[int], what: str) -> None:
        check_reserved(self._reserved, block_ids, what)

    def free(self, block_ids: Sequence[int]) -> None:
        self.check_reserved(block_ids, "free_blocks")
        self._pool.free_blocks([self._reserved.pop(b) for b in block_ids])

    def adopt(self, request_id: str, block_ids: Sequence[int]) -> None:
        """Make reserved blocks the block table of a request vLLM is about to be given.

        vLLM then treats them as blocks the request already computed (``num_computed_tokens`` covers them)
        and allocates only what its next tokens need; with prefix caching they are hashed like any other.
        """
        self.check_reserved(block_ids, "commit_migrated")
        if self.held_by(request_id):
            raise ValueError(f"request {request_id}: already holds blocks here")
        self._table.req_to_blocks[request_id] = [self._reserved.pop(b) for b in block_ids]
        self._table.num_cached_block[request_id] = 0

    def release_all_reserved(self) -> None:
        if self._reserved:
            self._pool.free_blocks(list(self._reserved.values()))
            self._reserved.clear()
