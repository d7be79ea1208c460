"""The paged KV cache: one preallocated tensor of blocks (who holds which block: :mod:`.blocks`).

Layout ``[num_layers, 2 (K, V), num_blocks, block_size, kv_heads, head_dim]``: ``cache.layer(i)`` gives
layer i's K and V (each ``num_blocks x block_size x kv_heads x head_dim``), and ``export`` gathers any
set of blocks of all layers into one contiguous tensor (what live migration ships).
"""

from __future__ import annotations

from typing import Sequence

import torch

from llumnix_dask.engine import kv_copy


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
        return kv_copy.gather_blocks(self.data, self._index(block_ids), block_dim=2)

    def import_(self, block_ids: Sequence[int], buffer: torch.Tensor) -> None:
        """Scatter a buffer made by :meth:`export` (possibly by another engine) into these blocks."""
        expected = (*self.data.shape[:2], len(block_ids), *self.data.shape[3:])
        if tuple(buffer.shape) != expected:
            raise ValueError(f"import_blocks: buffer shape {tuple(buffer.shape)} does not match {expected}")
        kv_copy.scatter_blocks(self.data, self._index(block_ids), buffer, block_dim=2)
