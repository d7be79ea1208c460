"""Gather / scatter of KV blocks between a paged KV cache and a contiguous staging buffer: the one KV copy
path of every engine that keeps its cache in torch tensors (nano, vllm), used by live migration.

A migration stage copies a handful of scattered blocks; sending them one by one would pay the per-message
cost hundreds of times, so they are first *gathered* into one contiguous buffer, sent as one message, and
*scattered* into the destination's pre-allocated blocks::

    >>> import torch
    >>> cache = torch.arange(24.0).reshape(6, 4)        # 6 blocks of 4 values
    >>> buf = gather_blocks(cache, [4, 1])
    >>> buf.tolist()
    [[16.0, 17.0, 18.0, 19.0], [4.0, 5.0, 6.0, 7.0]]
    >>> other = torch.zeros(6, 4)
    >>> scatter_blocks(other, [0, 2], buf)
    >>> other[2].tolist()
    [4.0, 5.0, 6.0, 7.0]

The block index is dimension ``block_dim`` of the cache (e.g. 2 for a ``[layers, 2, blocks, ...]``
cache); the buffer keeps the cache's layout with that dimension shrunk to ``len(block_ids)``, so a buffer
gathered from one cache scatters into any cache of the same layout.

Backends: ``"torch"`` (``index_select`` / ``index_copy_``, any device), ``"triton"`` (one GPU program per
block and chunk; also runs on CPU tensors under ``TRITON_INTERPRET=1`` for testing) and ``"auto"``
(Triton for contiguous CUDA caches when it is installed, torch otherwise). The kernels themselves are documented in
the top-level ``kernels/README.md``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import torch

BACKENDS = ("auto", "torch", "triton")
# Elements one Triton program copies; a power of two (Triton's arange requires it).
_TRITON_CHUNK = 1024


def _ids_tensor(block_ids: Sequence[int] | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(block_ids, torch.Tensor):
        return block_ids.to(device=device, dtype=torch.int64)
    return torch.as_tensor(list(block_ids), dtype=torch.int64, device=device)


def _check(cache: torch.Tensor, ids: torch.Tensor, block_dim: int) -> int:
    if not -cache.dim() <= block_dim < cache.dim():
        raise ValueError(f"block_dim: {block_dim} is out of range for a cache of shape {tuple(cache.shape)}")
    block_dim %= cache.dim()
    n = cache.shape[block_dim]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise IndexError(f"block_ids: ids must lie in [0, {n}), got {ids.tolist()}")
    return block_dim


def triton_available() -> bool:
    """True when the Triton kernels can run (Triton installed, and a GPU or interpreter mode)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


def _pick_backend(backend: str, cache: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown kernel backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "triton" if cache.is_cuda and cache.is_contiguous() and triton_available() else "torch"
    return backend


def gather_blocks(
    cache: torch.Tensor,
    block_ids: Sequence[int] | torch.Tensor,
    *,
    block_dim: int = 0,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Copy blocks ``block_ids`` (in that order) of ``cache`` into one contiguous buffer and return it."""
    ids = _ids_tensor(block_ids, cache.device)
    block_dim = _check(cache, ids, block_dim)
    shape = list(cache.shape)
    shape[block_dim] = ids.numel()
    if out is None:
        out = torch.empty(shape, dtype=cache.dtype, device=cache.device)
    elif list(out.shape) != shape or out.dtype != cache.dtype or not out.is_contiguous():
        raise ValueError(f"out: need a contiguous {cache.dtype} tensor of shape {shape}, got {tuple(out.shape)}")
    if ids.numel() == 0:
        return out
    if _pick_backend(backend, cache) == "triton":
        outer, num_blocks, inner = _three_d(cache, block_dim)
        _launch(_triton_kernels()[0], cache, ids, out, outer, num_blocks, inner)
    else:
        torch.index_select(cache, block_dim, ids, out=out)
    return out


def scatter_blocks(
    cache: torch.Tensor,
    block_ids: Sequence[int] | torch.Tensor,
    buffer: torch.Tensor,
    *,
    block_dim: int = 0,
    backend: str = "auto",
) -> None:
    """Write a buffer made by :func:`gather_blocks` into blocks ``block_ids`` of ``cache`` (in place)."""
    ids = _ids_tensor(block_ids, cache.device)
    block_dim = _check(cache, ids, block_dim)
    shape = list(cache.shape)
    shape[block_dim] = ids.numel()
    if list(buffer.shape) != shape:
        if buffer.numel() != ids.numel() * (cache.numel() // max(cache.shape[block_dim], 1)):
            raise ValueError(f"buffer: expected {shape} for {ids.numel()} blocks, got {tuple(buffer.shape)}")
        buffer = buffer.reshape(shape)
    buffer = buffer.to(device=cache.device, dtype=cache.dtype)
    if ids.numel() == 0:
        return
    if _pick_backend(backend, cache) == "triton":
        outer, num_blocks, inner = _three_d(cache, block_dim)
        _launch(_triton_kernels()[1], cache, ids, buffer.contiguous(), outer, num_blocks, inner)
    else:
        cache.index_copy_(block_dim, ids, buffer)


def _three_d(cache: torch.Tensor, block_dim: int) -> tuple[int, int, int]:
    """(outer, blocks, inner) sizes of the cache seen as a 3-D array around the block dimension."""
    if not cache.is_contiguous():
        raise ValueError("cache: the triton backend needs a contiguous cache; use backend='torch'")
    outer = 1
    for s in cache.shape[:block_dim]:
        outer *= s
    inner = 1
    for s in cache.shape[block_dim + 1 :]:
        inner *= s
    return outer, cache.shape[block_dim], inner


def _launch(kernel: Any, cache, ids, buf, outer: int, num_blocks: int, inner: int) -> None:
    import triton

    grid = (ids.numel(), outer, triton.cdiv(inner, _TRITON_CHUNK))
    kernel[grid](cache, ids, buf, num_blocks, ids.numel(), inner, CHUNK=_TRITON_CHUNK)


@functools.lru_cache(maxsize=None)
def _triton_kernels_for(interpret: bool) -> tuple[Any, Any]:
    # Built lazily (and per interpreter mode): triton.jit decides at decoration time whether the kernel
    # is compiled for the GPU or interpreted on the host, and importing triton must stay optional.
    import triton
    import triton.language as tl

    @triton.jit
    def gather_kernel(cache, ids, buf, num_blocks, num_ids, inner, CHUNK: tl.constexpr):
        b = tl.program_id(0)  # which requested block
        o = tl.program_id(1)  # which outer slice (e.g. layer x K/V)
        c = tl.program_id(2)  # which chunk of the block's elements
        src_block = tl.load(ids + b).to(tl.int64)
        offs = c.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
        mask = offs < inner
        o64 = o.to(tl.int64)
        values = tl.load(cache + (o64 * num_blocks + src_block) * inner + offs, mask=mask)
        tl.store(buf + (o64 * num_ids + b.to(tl.int64)) * inner + offs, values, mask=mask)

    @triton.jit
    def scatter_kernel(cache, ids, buf, num_blocks, num_ids, inner, CHUNK: tl.constexpr):
        b = tl.program_id(0)
        o = tl.program_id(1)
        c = tl.program_id(2)
        dst_block = tl.load(ids + b).to(tl.int64)
        offs = c.to(tl.int64) * CHUNK + tl.arange(0, CHUNK)
        mask = offs < inner
        o64 = o.to(tl.int64)
        values = tl.load(buf + (o64 * num_ids + b.to(tl.int64)) * inner + offs, mask=mask)
        tl.store(cache + (o64 * num_blocks + dst_block) * inner + offs, values, mask=mask)

    return gather_kernel, scatter_kernel


def _triton_kernels() -> tuple[Any, Any]:
    return _triton_kernels_for(os.environ.get("TRITON_INTERPRET") == "1")
