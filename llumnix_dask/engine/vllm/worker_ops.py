"""Functions that run *inside* vLLM's worker(s), sent there with ``Executor.collective_rpc(fn, args=...)``.

With the in-process executor (``distributed_executor_backend="uni"``) they run in the calling thread; with
vLLM's multiprocess executor (tensor parallelism on GPUs) they run in every worker process, and each rank
gathers or scatters its own shard of the KV heads. Each takes the worker wrapper as first argument.

KV blocks: vLLM keeps one tensor per attention layer in ``model_runner.kv_caches``; the block dimension is
wherever the attention backend put it (dim 0 on CPU: ``[blocks, kv_heads, block_size, 2 * head_dim]``;
dim 1 for FlashAttention: ``[2, blocks, block_size, kv_heads, head_dim]``). A gathered buffer is
``[layers, n, *rest]`` with the block dimension moved next to the layers, and a scatter takes the same.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

# engine id -> that engine's model runner, in each worker process: the migration connector finds runners here.
RUNNERS: dict[str, Any] = {}


def _runner(wrapper: Any) -> Any:
    return wrapper.worker.model_runner


def block_dim(kv: torch.Tensor, num_blocks: int) -> int:
    """Which dimension of a layer's KV tensor indexes blocks."""
    dims = [d for d, size in enumerate(kv.shape) if size == num_blocks]
    if len(dims) != 1:
        raise RuntimeError(
            f"cannot tell the block dimension of a KV cache of shape {tuple(kv.shape)} with {num_blocks} blocks; "
            "this attention backend's layout is not supported for live migration"
        )
    return dims[0]


def _layers(runner: Any) -> tuple[list[torch.Tensor], int]:
    caches = runner.kv_caches
    if isinstance(caches, dict):  # some runners keep them by layer name
        caches = list(caches.values())
    num_blocks = runner.kv_cache_config.num_blocks
    return list(caches), block_dim(caches[0], num_blocks)


def register_runner(wrapper: Any, engine_id: str) -> dict[str, Any]:
    """Remember this worker's model runner under ``engine_id``; returns the KV layout of one block."""
    runner = _runner(wrapper)
    RUNNERS[engine_id] = runner
    layers, dim = _layers(runner)
    per_block = list(layers[0].shape)
    del per_block[dim]
    return {
        "num_layers": len(layers),
        "block_shape": per_block,
        "dtype": str(layers[0].dtype).removeprefix("torch."),
        "device": str(layers[0].device),
        "block_nbytes": len(layers) * layers[0][(slice(None),) * dim + (0,)].numel() * layers[0].element_size(),
    }


def unregister_runner(wrapper: Any, engine_id: str) -> None:
    RUNNERS.pop(engine_id, None)


def gather_blocks(wrapper: Any, block_ids: Sequence[int]) -> torch.Tensor:
    """``[layers, len(block_ids), *block_shape]``: a contiguous copy of these blocks of every layer.

    Reads only: the step thread may run a forward meanwhile, which never writes a block that is full (the
    migration copies full blocks while the request decodes) or paused (its request is out of the batch).
    """
    layers, dim = _layers(_runner(wrapper))
    index = torch.as_tensor(list(block_ids), dtype=torch.long, device=layers[0].device)
    with torch.no_grad():
        return torch.stack([kv.index_select(dim, index).movedim(dim, 0) for kv in layers])


def scatter_blocks(wrapper: Any, block_ids: Sequence[int], buffer: torch.Tensor) -> None:
    """Write a buffer made by :func:`gather_blocks` (on this or another engine) into these blocks."""
    layers, dim = _layers(_runner(wrapper))
    expected = (len(layers), len(block_ids), *[s for d, s in enumerate(layers[0].shape) if d != dim])
    if tuple(buffer.shape) != expected:
        raise ValueError(f"import_blocks: buffer shape {tuple(buffer.shape)} does not match {expected}")
    index = torch.as_tensor(list(block_ids), dtype=torch.long, device=layers[0].device)
    # The KV tensors were made under inference mode; in-place writes to them must be too.
    with torch.inference_mode():
        for kv, data in zip(layers, buffer.to(device=layers[0].device, dtype=layers[0].dtype)):
            kv.index_copy_(dim, index, data.movedim(0, dim))


def scatter_rank_blocks(wrapper: Any, block_ids: Sequence[int], buffer: torch.Tensor) -> None:
    """Tensor parallel: each rank scatters its own shard of a :func:`stack_ranks` buffer."""
    scatter_blocks(wrapper, block_ids, buffer[wrapper.worker.rank])


def stack_ranks(parts: list[torch.Tensor]) -> torch.Tensor:
    """``[ranks, layers, n, ...]`` from each rank's gathered blocks (tensor parallel: a shard of the heads each)."""
    return torch.stack([p.cpu() for p in parts])


def sampler_state(wrapper: Any, request_id: str) -> bytes | None:
    """The random-generator state of a seeded request (None: not seeded, or unknown to this worker)."""
    state = _runner(wrapper).requests.get(request_id)
    generator = getattr(state, "generator", None)
    if generator is None:
        return None
    return bytes(generator.get_state().numpy().tobytes())


def restore_sampler_states(engine_id: str, states: dict[str, bytes]) -> None:
    """Set the generators of requests that just joined this worker's batch to the states they had elsewhere."""
    runner = RUNNERS.get(engine_id)
    if runner is None:
        return
    for request_id, raw in states.items():
        state = runner.requests.get(request_id)
        generator = getattr(state, "generator", None)
        if generator is not None:
            generator.set_state(torch.frombuffer(bytearray(raw), dtype=torch.uint8))
