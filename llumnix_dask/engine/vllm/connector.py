"""The KV connector that every vllm-backend engine runs with (vLLM's KV connector V1 API).

vLLM loads it by module path (``kv_connector_module_path``); it moves no KV itself: migrated KV lands
directly in blocks the destination pre-allocated (see :mod:`.blocks`). What it adds is a hook inside every
step, between vLLM's bookkeeping of the step's requests and their sampling: each seeded request's random
generator is seeded for the position it samples now, from ``(seed, position)`` alone
(:func:`llumnix_dask.engine.seeding.position_seed`). Seeded sampling then depends on nothing an instance
keeps, so a request that migrates, moves while queued, or is recomputed on another instance after its own
died draws exactly what it would have drawn undisturbed, as on the nano engine.

Both roles live in one class, as vLLM expects: the scheduler role computes the step's seeds and ships them
in the step's metadata, the worker role applies them (:func:`.worker_ops.reseed`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from llumnix_dask.engine.seeding import position_seed
from llumnix_dask.engine.vllm import worker_ops

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request as VllmRequest

CONNECTOR_NAME = "LlumnixMigrationConnector"
MODULE_PATH = __name__


@dataclass
class MigrationConnectorMetadata(KVConnectorMetadata):
    engine_id: str
    seeds: dict[str, int] = field(default_factory=dict)  # request id -> seed of the draw it makes this step


class LlumnixMigrationConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: "KVCacheConfig"):
        super().__init__(vllm_config, role, kv_cache_config)
        self.engine_id = str(vllm_config.kv_transfer_config.engine_id)
        self._requests: dict[str, Any] = {}

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # nothing is handed off when a request finishes: preemption stays vLLM's plain recompute

    # -- scheduler side ----------------------------------------------------------------------------
    def bind_requests(self, requests: dict[str, Any]) -> None:
        """The scheduler's request table (id -> vLLM Request), read when a step's seeds are computed."""
        self._requests = requests

    def get_num_new_matched_tokens(self, request: "VllmRequest", num_computed_tokens: int) -> tuple[int, bool]:
        return 0, False  # no external KV: a migrated request brings its own blocks

    def update_state_after_alloc(self, request: "VllmRequest", blocks: "KVCacheBlocks", num_external_tokens: int):
        return None

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = MigrationConnectorMetadata(self.engine_id)
        for rid in scheduler_output.num_scheduled_tokens:
            req = self._requests.get(rid)
            seed = None if req is None or req.sampling_params is None else req.sampling_params.seed
            if seed is not None:
                # Every token so far is the position of the one sampled now; it is the same on any instance
                # (a migrated request's prompt there is its prompt and output here).
                meta.seeds[rid] = position_seed(seed, req.num_tokens)
        return meta

    # -- worker side -------------------------------------------------------------------------------
    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        # Runs after the model runner added this step's requests to its batch and before it samples; the
        # metadata names the engine, since one worker-side connector serves every engine of the process.
        meta = self._get_connector_metadata()
        if isinstance(meta, MigrationConnectorMetadata) and meta.seeds:
            worker_ops.reseed(meta.engine_id, meta.seeds)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        return None

    def wait_for_save(self) -> None:
        return None
