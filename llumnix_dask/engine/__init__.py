"""Engine backends behind one protocol (:class:`~llumnix_dask.engine.base.EngineBackend`).

Build one from a config with :func:`create_engine`::

    >>> from llumnix_dask.config import EngineConfig
    >>> engine = create_engine(EngineConfig(backend="nano"), "i0")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from llumnix_dask.engine.base import EngineBackend, MigrationState, StepOutput

if TYPE_CHECKING:
    from llumnix_dask.config import EngineConfig

__all__ = ["EngineBackend", "MigrationState", "StepOutput", "create_engine"]


def create_engine(config: "EngineConfig", instance_id: str) -> EngineBackend:
    """The engine named by ``config.backend`` (torch and the model are imported only when needed)."""
    if config.backend == "nano":
        from llumnix_dask.engine.nano.engine import NanoEngine

        return NanoEngine(config, instance_id)
    if config.backend == "sim":
        from llumnix_dask.config import DEFAULT_BLOCK_SIZE
        from llumnix_dask.sim_config import A10_LLAMA_7B
        from llumnix_dask.engine.sim import VOCAB, SimEngine
        from llumnix_dask.engine.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(config)

        # Real time: each step sleeps its modelled latency, so a cluster of sim instances behaves like one
        # of LLaMA-7B/A10 instances (the simulator's calibrated profile) without any tensors.
        return SimEngine(
            instance_id,
            num_blocks=config.num_blocks or A10_LLAMA_7B.num_blocks,
            block_size=config.block_size or DEFAULT_BLOCK_SIZE,
            max_batch_size=config.max_batch_size,
            max_batched_tokens=config.max_batched_tokens,
            latency=A10_LLAMA_7B.latency,
            realtime=True,
            priority_scheduling=True,
            vocab_size=tokenizer.vocab_size if tokenizer is not None else VOCAB,
            detokenize=tokenizer.decode if tokenizer is not None else None,
        )
    if config.backend == "vllm":
        from llumnix_dask.engine.vllm.engine import VllmEngine

        return VllmEngine(config, instance_id)
    raise ValueError(f"EngineConfig.backend: backend {config.backend!r} is not implemented; use nano, sim or vllm")
