"""The KV connector that every vllm-backend engine runs with (vLLM's KV connector V1 API).

vLLM loads it by module path (``kv_connector_module_path``); it moves no KV itself. Migrated KV lands
directly in blocks the destination pre-allocated (see :mod:`.migration`). What the connector adds is a hook
inside the step that first runs a migrated request: a seeded request's random generator is created fresh
by vLLM's model runner in that step, and the worker side of this connector sets it, before the step
samples, to the state it had on the source, so the next draw is the one the source would have made.

Both roles live in one class, as vLLM expects. The scheduler role collects the states the engine hands it
(:meth:`expect_sampler_state`) and ships those of the requests scheduled for the first time in a step in
that step's metadata; the worker role applies them (:func:`.worker_ops.restore_sampler_states`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

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
    sampler_states: dict[str, bytes] = field(default_factory=dict)


class LlumnixMigrationConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config: "KVCacheConfig"):
        super().__init__(vllm_config, role, kv_cache_config)
        self.engine_id = str(vllm_config.kv_transfer_config.engine_id)
        self._pending: dict[str, bytes] = {}

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # nothing is handed off when a request finishes: preemption stays vLLM's plain recompute

    # -- scheduler side ----------------------------------------------------------------------------
    def expect_sampler_state(self, request_id: str, state: bytes) -> None:
        """The request with this id, added next, resumes a generator in this state."""
        self._pending[request_id] = state

    def forget(self, request_id: str) -> None:
        self._pending.pop(request_id, None)

    def get_num_new_matched_tokens(self, request: "VllmRequest", num_computed_tokens: int) -> tuple[int, bool]:
        return 0, False  # no external KV: a migrated request brings its own blocks

    def update_state_after_alloc(self, request: "VllmRequest", blocks: "KVCacheBlocks", num_external_tokens: int):
        return None

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = MigrationConnectorMetadata(self.engine_id)
        if self._pending:
            for new in scheduler_output.scheduled_new_reqs:
                state = self._pending.pop(new.req_id, None)
                if state is not None:
                    meta.sampler_states[new.req_id] = state
        return meta

    def request_finished(self, request: "VllmRequest", block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        self._pending.pop(request.request_id, None)
        return False, None

    # -- worker side -------------------------------------------------------------------------------
    def start_load_kv(self, forward_context: Any, **kwargs: Any) -> None:
        # Runs after the model runner added this step's new requests (their generators exist) and before it
        # samples; the metadata names the engine, since one worker-side connector serves every engine of the
        # process.
        meta = self._get_connector_metadata()
        if isinstance(meta, MigrationConnectorMetadata) and meta.sampler_states:
            worker_ops.restore_sampler_states(meta.engine_id, meta.sampler_states)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None

    def save_kv_layer(self, layer_name: str, kv_layer: Any, attn_metadata: Any, **kwargs: Any) -> None:
        return None

    def wait_for_save(self) -> None:
        return None
