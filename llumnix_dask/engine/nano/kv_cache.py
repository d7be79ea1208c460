"""The paged KV cache: one preallocated tensor of blocks and the free list that hands them out.

Layout ``[num_layers, 2 (K, V), num_blocks, block_size, kv_heads, head_dim]``: ``cache.layer(i)`` gives
layer i's K and V (each ``num_blocks x block_size x kv_heads x head_dim``), and ``export`` gathers any
set of blocks of all layers into one contiguous tensor (what live migration ships)::

    >>> bm = BlockManager(4)
    >>> bm.allocate(3), bm.num_free
    ([0, 1, 2], 1)
    >>> bm.allocate(2) is None   # all-or-nothing
    True
"""

from __future__ import annotations

from typing import Sequence

import torch


class BlockManager:
    """Free list of KV block ids. Not thread-safe on its own: the engine's lock guards it."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        # Popped from the end; reversed so that a fresh manager hands out 0, 1, 2, ...
        self._free = list(range(num_blocks - 1, -1, -1))
        self._is_free = [True] * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def allocate(self, n: int) -> list[int] | None:
        """n block ids, or None (nothing taken) if fewer than n are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} blocks")
        if n > len(self._free):
            return None
        ids = [self._free.pop() for _ in range(n)]
        for i in ids:
            self._is_free[i] = False
        return ids

    def free(self, ids: Sequence[int]) -> None:
        for i in ids:
            if not 0 <= i < self.num_blocks:
                raise ValueError(f"block id {i} out of range [0, {self.num_blocks})")
            if self._is_free[i]:
                raise ValueError(f"block {i} is already free (double free)")
        for i in ids:
            self._is_free[i] = True
            self._free.append(i)

    def is_free(self, block_id: int) -> bool:
        return self._is_free[block_id]


class PagedKVCache:
    """Preallocated K/V block storage for all layers."""

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.block_size = block_size
        self.num_blocks = num_blocks
        self.data = torch.zeros(
            (num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim), dtype=dtype, device=device
        )

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[i, 0], self.data[i, 1]

    @property
    def bytes_per_block(self) -> int:
        return self.data[:, :, 0].numel() * self.data.element_size()

    def _index(self, block_ids: Sequence[int]) -> torch.Tensor:
        idx = torch.as_tensor(list(block_ids), dtype=torch.long)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_blocks):
            raise ValueError(f"block ids out of range [0, {self.num_blocks}): {list(block_ids)}")
        return idx.to(self.data.device)

    def export(self, block_ids: Sequence[int]) -> torch.Tensor:
        """Contiguous copy ``[num_layers, 2, len(block_ids), block_size, kv_heads, head_dim]``."""
        return self.data.index_select(2, self._index(block_ids))

    def import_(self, block_ids: Sequence[int], buffer: torch.Tensor) -> None:
        """Scatter a buffer made by :meth:`export` (possibly by another engine) into these blocks."""
        expected = (*self.data.shape[:2], len(block_ids), *self.data.shape[3:])
        if tuple(buffer.shape) != expected:
            raise ValueError(f"import_blocks: buffer shape {tuple(buffer.shape)} does not match {expected}")
        self.data.index_copy_(2, self._index(block_ids), buffer.to(device=self.data.device, dtype=self.data.dtype))
