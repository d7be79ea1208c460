"""vLLM engine arguments for one instance, from an :class:`~llumnix_dask.config.EngineConfig`.

The EngineConfig fields map onto vLLM's (``max_batch_size`` -> ``max_num_seqs``, ``kv_cache_bytes`` ->
``kv_cache_memory_bytes``, ...); ``EngineConfig.vllm_args`` passes any other ``vllm.EngineArgs`` field and
wins over the mapped ones. A few settings are the backend's own and cannot be overridden: the engine runs
in this process and steps synchronously (the llumlet drives it), tokenization is done by llumnix-dask, and
the migration connector is installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import uuid
from pathlib import Path
from typing import Any

from llumnix_dask.config import EngineConfig

# vLLM's default KV block sizes (tokens) on CPU (its attention kernel needs a multiple of 32) and on GPU.
CPU_DEFAULT_BLOCK_SIZE = 128
GPU_DEFAULT_BLOCK_SIZE = 16

# Settings live migration depends on: a step is schedule + forward + update (no step overlaps another),
# the engine core runs in the caller's process, one KV-cache group per model.
FIXED_ARGS = {
    "async_scheduling": False,
    "skip_tokenizer_init": True,
    "disable_hybrid_kv_cache_manager": True,
    "disable_log_stats": True,
    "kv_transfer_config": None,  # set by engine_args()
}


def engine_args(config: EngineConfig, model: str, instance_id: str) -> tuple[Any, str]:
    """``(vllm.EngineArgs, engine id)`` for this instance."""
    from vllm.engine.arg_utils import EngineArgs
    from vllm.config import KVTransferConfig

    from llumnix_dask.engine.vllm.connector import CONNECTOR_NAME, MODULE_PATH

    engine_id = f"{instance_id}-{uuid.uuid4().hex[:8]}"
    mapped: dict[str, Any] = {
        "model": model,
        "dtype": config.dtype,
        "max_num_seqs": config.max_batch_size,
        "max_num_batched_tokens": config.max_batched_tokens,
        "seed": config.seed,
        "enable_prefix_caching": False,
        # One priority for every request: vLLM then queues by arrival time (a request that migrates in while
        # queued takes its arrival-order place, as on the nano engine) and preempts the latest arrival.
        "scheduling_policy": "priority",
        "use_tqdm_on_load": False,
    }
    if config.block_size is not None:
        mapped["block_size"] = config.block_size
    if config.max_model_len is not None:
        mapped["max_model_len"] = config.max_model_len
    on_cpu = _on_cpu(config)
    if config.num_blocks is not None:
        mapped["num_gpu_blocks_override"] = config.num_blocks + 1  # vLLM keeps one block as its null block
        block = config.block_size or (CPU_DEFAULT_BLOCK_SIZE if on_cpu else GPU_DEFAULT_BLOCK_SIZE)
        if config.max_model_len is None:
            # vLLM refuses to start when one request of the model's full context cannot fit the cache; like
            # the nano engine, cap the context at the cache instead.
            mapped["max_model_len"] = min(_model_context(model), config.num_blocks * block)
        if on_cpu:  # a byte budget that holds those blocks (else vLLM claims a share of the machine's memory)
            mapped["kv_cache_memory_bytes"] = (config.num_blocks + 1) * block * _kv_bytes_per_token(model, config.dtype)
    elif on_cpu:
        mapped["kv_cache_memory_bytes"] = config.kv_cache_bytes
    names = {f.name for f in dataclasses.fields(EngineArgs)}
    for key in config.vllm_args:
        if key not in names:
            near = difflib.get_close_matches(key, names, n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else ""
            raise ValueError(f"EngineConfig.vllm_args: {key!r} is not a vLLM engine argument{hint}")
        if key in FIXED_ARGS:
            raise ValueError(f"EngineConfig.vllm_args: {key!r} is set by the vllm backend and cannot be changed")
    kwargs = {**mapped, **config.vllm_args, **FIXED_ARGS}
    if kwargs.get("tensor_parallel_size", 1) == 1 and "distributed_executor_backend" not in config.vllm_args:
        kwargs["distributed_executor_backend"] = "uni"
    kwargs["kv_transfer_config"] = KVTransferConfig(
        kv_connector=CONNECTOR_NAME,
        kv_connector_module_path=MODULE_PATH,
        kv_role="kv_both",
        engine_id=engine_id,
    )
    return EngineArgs(**kwargs), engine_id


def _hf_config(model: str) -> dict:
    path = Path(model) / "config.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _model_context(model: str) -> int:
    """The checkpoint's context length (config.json's max_position_embeddings)."""
    return int(_hf_config(model).get("max_position_embeddings") or 1 << 30)  # unknown: vLLM decides


def _kv_bytes_per_token(model: str, dtype: str) -> int:
    """K and V of one token over all layers, from config.json (an upper bound if fields are missing)."""
    cfg = _hf_config(model)
    heads = int(cfg.get("num_attention_heads") or 64)
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or int(cfg.get("hidden_size") or 8192) // heads)
    layers = int(cfg.get("num_hidden_layers") or 128)
    return 2 * layers * kv_heads * head_dim * (4 if dtype == "float32" else 2)


def _on_cpu(config: EngineConfig) -> bool:
    """vLLM sizes a GPU's KV cache from ``gpu_memory_utilization``; on CPU it needs a byte budget."""
    if config.device == "cpu":
        return True
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001 - no platform detected: treat as CPU
        return True
