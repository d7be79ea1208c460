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

from llumnix_dask.engine import kv_copy

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
        return torch.stack([kv_copy.gather_blocks(kv, index, block_dim=dim).movedim(dim, 0) for kv in layers])


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
            kv_copy.scatter_blocks(kv, index, data.movedim(0, dim), block_dim=dim)


def scatter_rank_blocks(wrapper: Any, block_ids: Sequence[int], buffer: torch.Tensor) -> None:
    """Tensor parallel: each rank scatters its own shard of a :func:`stack_ranks` buffer."""
    scatter_blocks(wrapper, block_ids, buffer[wrapper.worker.rank])


def stack_ranks(parts: list[torch.Tensor]) -> torch.Tensor:
    """``[ranks, layers, n, ...]`` from each rank's gathered blocks (tensor parallel: a shard of the heads each)."""
    return torch.stack([p.cpu() for p in parts])


class PositionSeededGenerator(torch.Generator):
    """The generator of a seeded request, seeded afresh for every draw (see :func:`reseed`). It keeps no
    offset: vLLM rewinds the offset of a draw it discards (a partial prefill), which a CPU generator cannot
    do (vLLM 0.32 fails there), and which a generator reseeded before every draw does not need."""

    def get_offset(self) -> int:
        return 0

    def set_offset(self, offset: int) -> "PositionSeededGenerator":
        return self


def reseed(engine_id: str, seeds: dict[str, int]) -> None:
    """Seed the generators of this step's seeded requests for the position each samples now."""
    runner = RUNNERS.get(engine_id)
    if runner is None:
        return
    batch = runner.input_batch
    for request_id, seed in seeds.items():
        state = runner.requests.get(request_id)
        generator = getattr(state, "generator", None)
        if generator is None:
            continue
        if not isinstance(generator, PositionSeededGenerator):
            generator = PositionSeededGenerator(device=generator.device)
            state.generator = generator
            index = batch.req_id_to_index.get(request_id)
            if index is not None:
                batch.generators[index] = generator
        generator.manual_seed(seed)
