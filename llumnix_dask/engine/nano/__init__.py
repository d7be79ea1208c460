"""The embedded nano engine: a Llama-family model with a paged KV cache and continuous batching.

Modules, one concept each:

* ``engine``     ``NanoEngine``, the ``EngineBackend`` implementation (serving + migration surface)
* ``scheduler``  FCFS queue, chunked prefill under ``max_batched_tokens``, preemption by recompute
* ``kv_cache``   the block free list and the ``[layers, 2, blocks, block_size, kv_heads, head_dim]`` cache
* ``batch``      one step's requests flattened into the tensors of a forward pass
* ``model``      the Llama forward pass (RMSNorm, RoPE, GQA, SwiGLU) with paged attention by torch ops
* ``linear``     linear layers with oneDNN-prepacked weights on CPU
* ``sampling``   greedy / temperature / top-k / top-p; the draw is a pure function of (seed, position)
* ``loader``     HF checkpoints: config.json + safetensors (sharded too) + tokenizer.json
* ``tiny_model`` random-weight checkpoints (``llumnix-dask make-tiny-model``) and the built-in default

Shared with the other backends: ``llumnix_dask.engine.detokenizer`` (incremental text and stop strings)
and ``llumnix_dask.engine.fair_lock`` (the FIFO engine lock). ``NanoEngine`` is imported lazily so that ``import llumnix_dask.engine.nano`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NanoEngine", "make_tiny_model", "default_model_dir"]


def __getattr__(name: str) -> Any:
    if name == "NanoEngine":
        from llumnix_dask.engine.nano.engine import NanoEngine

        return NanoEngine
    if name in ("make_tiny_model", "default_model_dir"):
        from llumnix_dask.engine.nano import tiny_model

        return getattr(tiny_model, name)
    raise AttributeError(name)
