"""Block bookkeeping of one nano engine: the free list, every request's block table, and the blocks held for
incoming migrations. The only code that hands out, grows, adopts or frees KV blocks; the engine's lock
guards every call::

    >>> blocks = NanoBlocks(num_blocks=4, block_size=2)
    >>> state = RequestState(None, seed=0, detok=None)
    >>> blocks.grow(state, 5), state.block_ids, blocks.num_free   # 5 tokens need 3 blocks of 2
    (True, [0, 1, 2], 1)
    >>> blocks.grow(state, 9)                                    # 2 more needed, 1 free: nothing taken
    False
    >>> blocks.release(state); blocks.num_free
    4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from llumnix_dask.engine.base import check_reserved
from llumnix_dask.request import Request


@dataclass(eq=False)
class RequestState:
    """The engine-side state of one request. Its ``block_ids`` (the KV blocks of its tokens, in order) are
    changed by :class:`NanoBlocks` only."""

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


class NanoBlocks:
    """Every KV block of one engine is free, in exactly one request's table, or reserved for a migration."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        # Popped from the end; reversed so that a fresh engine hands out 0, 1, 2, ...
        self._free = list(range(num_blocks - 1, -1, -1))
        self._reserved: set[int] = set()

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_reserved(self) -> int:
        return len(self._reserved)

    @property
    def reserved(self) -> frozenset[int]:
        return frozenset(self._reserved)

    def blocks_for(self, num_tokens: int) -> int:
        """Blocks that hold ``num_tokens`` tokens."""
        return -(-num_tokens // self.block_size)

    def missing(self, state: RequestState, num_tokens: int) -> int:
        """Blocks ``state`` still needs for KV of ``num_tokens`` tokens."""
        return max(0, self.blocks_for(num_tokens) - len(state.block_ids))

    def _take(self, n: int) -> list[int]:
        return [self._free.pop() for _ in range(n)]

    # -- request tables ----------------------------------------------------------------------------------
    def grow(self, state: RequestState, num_tokens: int) -> bool:
        """Extend the request's table to hold ``num_tokens`` tokens; False (nothing taken) if too few are free."""
        need = self.missing(state, num_tokens)
        if need > len(self._free):
            return False
        state.block_ids.extend(self._take(need))
        return True

    def release(self, state: RequestState) -> None:
        """Free the request's whole table (finished, aborted, preempted or migrated away)."""
        self._free.extend(state.block_ids)
        state.block_ids = []

    # -- pre-allocation for incoming migrations ----------------------------------------------------------
    def reserve(self, n: int, watermark: int = 0) -> list[int] | None:
        """n blocks held for a migration (they count as used), or None if fewer than ``watermark`` would remain."""
        if n < 0 or watermark < 0:
            raise ValueError(f"reserve_blocks: n and watermark must be >= 0, got {n}, {watermark}")
        if len(self._free) - n < watermark:
            return None
        ids = self._take(n)
        self._reserved.update(ids)
        return ids

    def check_reserved(self, block_ids: Sequence[int], what: str) -> None:
        check_reserved(self._reserved, block_ids, what)

    def free_reserved(self, block_ids: Sequence[int]) -> None:
        self.check_reserved(block_ids, "free_blocks")
        self._reserved.difference_update(block_ids)
        self._free.extend(block_ids)

    def adopt(self, state: RequestState, block_ids: Sequence[int]) -> None:
        """Reserved blocks become the table of a request that migrated in (they hold its KV, in order)."""
        self.check_reserved(block_ids, "commit_migrated")
        if state.block_ids:
            raise ValueError(f"request {state.request_id}: already holds blocks here")
        self._reserved.difference_update(block_ids)
        state.block_ids = list(block_ids)
