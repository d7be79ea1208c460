"""The configuration records a user sets (engine, policy, migration, tiny model, frontend, server), validated
when built. The simulator's (latency models, engine profiles, the paper's setup) are in
:mod:`llumnix_dask.sim_config`.

A bad value raises ``ValueError`` naming the field, e.g.::

    >>> PolicyConfig(dispatch="fastest")
    Traceback (most recent call last):
    ...
    ValueError: PolicyConfig.dispatch: unknown policy 'fastest'; choose one of infaas, llumnix, random, round_robin

Configs are frozen dataclasses; use :func:`dataclasses.replace` to derive a changed copy.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

DISPATCH_POLICIES = ("llumnix", "infaas", "round_robin", "random")
# The dispatch policies that never migrate for balance (the baselines).
NON_MIGRATING_POLICIES = ("infaas", "round_robin", "random")
REQUEST_SELECTIONS = ("SR", "LR", "LCR", "FCW")
ENGINE_BACKENDS = ("nano", "sim", "vllm")
# KV block size (tokens) of the nano and sim backends when EngineConfig.block_size is None. The vllm backend
# then takes vLLM's own default for the platform (16 on GPUs; 128 on CPUs, whose attention kernel needs a
# multiple of 32).
DEFAULT_BLOCK_SIZE = 16


def _fail(obj: Any, name: str, msg: str) -> None:
    raise ValueError(f"{type(obj).__name__}.{name}: {msg}")


def _check_positive(obj: Any, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
            _fail(obj, name, f"must be a number, got {value!r}")
        if value < 0 or (value == 0 and not allow_zero):
            _fail(obj, name, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _check_choice(obj: Any, name: str, choices: Iterable[str], what: str = "policy") -> None:
    value = getattr(obj, name)
    choices = tuple(choices)
    if value not in choices:
        _fail(obj, name, f"unknown {what} {value!r}; choose one of {', '.join(sorted(choices))}")


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of the global scheduler's policies (dispatch, migration, priorities, scaling).

    Freeness is measured in *blocks per running request* (paper section 4.4).
    """

    dispatch: str = "llumnix"
    # Migration: sources are instances with freeness below ``migrate_out_freeness`` (or with preempted /
    # waiting-too-long requests), destinations are instances above ``migrate_in_freeness``.
    migration_enabled: bool = True
    migrate_out_freeness: float = 10.0
    migrate_in_freeness: float = 60.0
    request_selection: str = "SR"
    # Dispatch skips instances whose freeness is below this while a non-busy one exists.
    busy_freeness: float = 10.0
    # Dispatch counts the requests sent to an instance that its load reports do not show yet, so a burst that
    # arrives between two reports spreads out. False: dispatch sees each instance's last report alone, as the
    # paper's global scheduler did (a burst then goes to the instance that reported itself freest).
    count_unreported_dispatches: bool = True
    # De-fragmentation: only the head-of-line queued request counts, in full, in virtual usage.
    defragmentation: bool = True
    # Priorities: an instance holding high-priority requests reserves this many blocks of fake usage per
    # high-priority request so that it stays lightly loaded (small batches, fast decode).
    priorities_enabled: bool = True
    priority_headroom_blocks: int = 320
    # The paper's form of the headroom: an instance holding any high-priority request counts as if it had only
    # this many blocks (``total - priority_instance_blocks`` of fake usage, once per instance), so it keeps a
    # batch of about that size. None: ``priority_headroom_blocks`` per high-priority request instead.
    priority_instance_blocks: int | None = None
    # Whether a high-priority request may migrate when no normal one is eligible (its instance is kept light
    # for it, so moving it undoes that; the paper's runs never moved one).
    migrate_high_priority: bool = True
    # How a draining instance (scale-down, ``Cluster.scale``) empties: by migrating its requests away, even under
    # a policy that never migrates for balance (infaas, round_robin, random), or, with False, by serving them
    # to the end while it receives no new ones (what the paper's INFaaS++ did: no migration at all).
    drain_by_migration: bool = True
    # Time-to-first-token targets (seconds) of normal and high-priority requests, None = no target. SLO
    # attainment measures requests without their own ``slo`` against them; the dashboard draws them and the
    # control panel edits them live.
    ttft_slo_s: float | None = None
    ttft_slo_high_s: float | None = None
    # Auto-scaling: keep the cluster's average freeness inside [scale_up_freeness, scale_down_freeness].
    scaling_enabled: bool = False
    scale_up_freeness: float = 25.0
    scale_down_freeness: float = 75.0
    min_instances: int = 1
    max_instances: int = 16
    # Admission control (bounded global queue): a new normal request is refused ("overloaded", HTTP 429 with
    # Retry-After) when the requests queued across the cluster reach this many per serving instance; a
    # high-priority one only at the second limit. None = no limit.
    queue_limit_per_instance: int | None = 256
    high_priority_queue_limit_per_instance: int | None = 1024
    # Ticks of the scheduler loops (seconds of wall time, or of simulated time in the simulator).
    migration_interval_s: float = 0.05
    scaling_interval_s: float = 10.0
    # Time the average freeness must stay outside the band before the cluster is rescaled.
    scaling_patience_s: float = 30.0
    random_seed: int = 0

    def __post_init__(self) -> None:
        _check_choice(self, "dispatch", DISPATCH_POLICIES)
        _check_choice(self, "request_selection", REQUEST_SELECTIONS)
        _check_positive(self, "migration_interval_s", "scaling_interval_s")
        _check_positive(self, "priority_headroom_blocks", "scaling_patience_s", allow_zero=True)
        _check_positive(self, "ttft_slo_s", "ttft_slo_high_s")
        for name in ("queue_limit_per_instance", "high_priority_queue_limit_per_instance"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                _fail(self, name, f"must be an integer >= 1 or None, got {value!r}")
        if self.priority_instance_blocks is not None and (
            not isinstance(self.priority_instance_blocks, int) or self.priority_instance_blocks < 0
        ):
            _fail(self, "priority_instance_blocks",
                  f"must be an integer >= 0 or None, got {self.priority_instance_blocks!r}")
        if self.min_instances < 1:
            _fail(self, "min_instances", f"must be >= 1, got {self.min_instances}")
        if self.max_instances < self.min_instances:
            _fail(self, "max_instances", f"must be >= min_instances ({self.min_instances}), got {self.max_instances}")
        if self.scale_up_freeness > self.scale_down_freeness:
            _fail(
                self,
                "scale_up_freeness",
                f"scaling band is empty: x={self.scale_up_freeness} > y={self.scale_down_freeness}",
            )
        if self.migrate_out_freeness > self.migrate_in_freeness:
            _fail(
                self,
                "migrate_out_freeness",
                f"must be <= migrate_in_freeness ({self.migrate_in_freeness}), got {self.migrate_out_freeness}",
            )


@dataclass(frozen=True)
class MigrationConfig:
    """Live-migration protocol knobs (defaults from the paper's public implementation)."""

    max_stages: int = 3
    last_stage_max_blocks: int = 16
    # Free blocks the destination must keep after pre-allocating the first stage.
    dst_watermark_blocks: int = 16
    # Destination frees its pre-allocation when the source is silent this long.
    dst_timeout_s: float = 10.0
    # Source gives up on a destination that does not answer a stage within this long.
    stage_timeout_s: float = 10.0
    # Transport chunks are at least this large (bytes) so per-message overhead is amortised.
    min_chunk_bytes: int = 16 * 1024 * 1024
    # A live stage gathers blocks from the source's cache in pieces of at most this many bytes (a message
    # carries several): each gather holds the engine's lock, so this bounds how long one decode step of
    # the source waits for the copy (~4 ms on a CPU core at 1 GB/s).
    max_gather_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in ("max_stages", "last_stage_max_blocks", "min_chunk_bytes", "max_gather_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _fail(self, name, f"must be an integer >= 1, got {value!r}")
        _check_positive(self, "dst_timeout_s", "stage_timeout_s")
        _check_positive(self, "dst_watermark_blocks", allow_zero=True)


@dataclass(frozen=True)
class EngineConfig:
    """One engine instance: which backend, which model, how much KV cache, how big a batch."""

    backend: str = "nano"
    model: str | None = None  # path to an HF checkpoint dir; None = the built-in tiny model
    block_size: int | None = None  # None = the backend's default (DEFAULT_BLOCK_SIZE; vLLM's own for vllm)
    num_blocks: int | None = None  # None = derived from kv_cache_bytes
    kv_cache_bytes: int = 256 * 1024 * 1024
    max_batch_size: int = 64
    # Tokens per step: longer prompts are prefilled in chunks, which bounds how long one step (and so every
    # other request's next token, and a migration's pause on either side) can take.
    max_batched_tokens: int = 512
    max_model_len: int | None = None  # None = the model's max_position_embeddings
    dtype: str = "float32"
    device: str = "auto"  # "auto" = cuda if visible else cpu
    seed: int = 0
    # torch intra-op CPU threads of the process hosting the engine (None = leave torch's default). Several
    # engine processes on one small box run much better with 1 each than with competing thread pools.
    cpu_threads: int | None = None
    # vllm backend only: further vLLM engine arguments (``vllm.EngineArgs`` fields), e.g.
    # {"enable_prefix_caching": True, "gpu_memory_utilization": 0.85, "enforce_eager": True}. They win over the
    # values derived from the fields above; an unknown name is refused when the engine starts.
    vllm_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_choice(self, "backend", ENGINE_BACKENDS, what="backend")
        for name in ("max_batch_size", "max_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _fail(self, name, f"must be an integer >= 1, got {value!r}")
        if self.block_size is not None and (not isinstance(self.block_size, int) or self.block_size < 1):
            _fail(self, "block_size", f"must be an integer >= 1 or None, got {self.block_size!r}")
        if not isinstance(self.vllm_args, dict) or not all(isinstance(k, str) for k in self.vllm_args):
            _fail(self, "vllm_args", f"must be a dict of vLLM engine argument names to values, got {self.vllm_args!r}")
        if self.vllm_args and self.backend != "vllm":
            _fail(self, "vllm_args", f"only the vllm backend takes vLLM engine arguments (backend is {self.backend!r})")
        if self.num_blocks is not None and (not isinstance(self.num_blocks, int) or self.num_blocks < 1):
            _fail(self, "num_blocks", f"must be an integer >= 1 or None, got {self.num_blocks!r}")
        if self.cpu_threads is not None and (not isinstance(self.cpu_threads, int) or self.cpu_threads < 1):
            _fail(self, "cpu_threads", f"must be an integer >= 1 or None, got {self.cpu_threads!r}")
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            _fail(self, "max_model_len", f"must be an integer >= 2 or None, got {self.max_model_len!r}")
        _check_positive(self, "kv_cache_bytes")
        if self.dtype not in ("float32", "float16", "bfloat16"):
            _fail(self, "dtype", f"must be float32, float16 or bfloat16, got {self.dtype!r}")


@dataclass(frozen=True)
class TinyModelConfig:
    """Shape of a random-weight Llama checkpoint written by ``llumnix-dask make-tiny-model``.

    The defaults are the built-in model used when ``EngineConfig.model`` is None: a real (if untrained)
    transformer of ~3M parameters, small enough for fast CPU tests.
    """

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 688
    vocab_size: int = 512
    max_position_embeddings: int = 2048
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    # Untied: with tied embeddings a random model mostly predicts the token it just read, and its greedy output
    # repeats one token, which would hide a wrong KV cache in the tests (its output would not depend on it).
    tie_word_embeddings: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "vocab_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                _fail(self, name, f"must be an integer >= 1, got {value!r}")
        if self.hidden_size % self.num_heads:
            _fail(self, "num_heads", f"must divide hidden_size ({self.hidden_size}), got {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            _fail(self, "num_kv_heads", f"must divide num_heads ({self.num_heads}), got {self.num_kv_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            _fail(self, "num_heads", f"head dim hidden_size/num_heads must be even for RoPE, got {self.hidden_size}/{self.num_heads}")
        if self.vocab_size < 260:
            _fail(self, "vocab_size", f"must be >= 260 (256 bytes + special tokens), got {self.vocab_size}")
        _check_positive(self, "rope_theta", "rms_norm_eps")


@dataclass(frozen=True)
class FrontendConfig:
    """The client side of a cluster (``Cluster``, the HTTP server): request intake, streams, recovery."""

    # A request whose instance died continues on another one: prompt and the tokens it already streamed are
    # recomputed there and sampling goes on from the same position (greedy and seeded requests yield the
    # tokens they would have). False: such a request ends with an error saying why.
    recover_requests: bool = True
    max_recoveries: int = 3
    # A request silent this long gets its instance checked (seconds); a closed token stream triggers the
    # check at once.
    stall_check_s: float = 3.0
    # A missing token index (a message that never came) is fetched from the instance holding the request
    # after this long.
    token_gap_timeout_s: float = 2.0
    health_check_interval_s: float = 0.5
    # Requests in flight in one frontend; beyond it new ones are refused as overloaded (bounded memory).
    max_active_requests: int = 10_000
    # Prompts longer than this (bytes) are tokenized in a helper process: tokenizers hold the GIL, and a
    # megabyte prompt would stall every stream of this process for a second.
    tokenize_in_process_above_bytes: int = 64 * 1024

    def __post_init__(self) -> None:
        _check_positive(self, "stall_check_s", "token_gap_timeout_s", "health_check_interval_s")
        for name in ("max_recoveries", "tokenize_in_process_above_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                _fail(self, name, f"must be an integer >= 0, got {value!r}")
        if not isinstance(self.max_active_requests, int) or self.max_active_requests < 1:
            _fail(self, "max_active_requests", f"must be an integer >= 1, got {self.max_active_requests!r}")


@dataclass(frozen=True)
class ServeConfig:
    """HTTP front end (`llumnix-dask up`)."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    model_name: str = "llumnix-tiny"
    # Larger request bodies are refused with 413 before they are read in full.
    max_request_bytes: int = 4 * 1024 * 1024

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            _fail(self, "port", f"must be an integer in [0, 65535], got {self.port!r}")
        if not isinstance(self.max_request_bytes, int) or self.max_request_bytes < 1024:
            _fail(self, "max_request_bytes", f"must be an integer >= 1024, got {self.max_request_bytes!r}")


def _coerce_policy_value(current: PolicyConfig, name: str, value: Any) -> Any:
    """Knob values arrive as JSON / CLI strings; convert them to the field's type first."""
    old = getattr(current, name)
    if isinstance(old, bool) and isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"PolicyConfig.{name}: expected a boolean, got {value!r}")
    if isinstance(old, bool):
        return bool(value)
    if isinstance(old, int) and isinstance(value, (str, float)):
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"PolicyConfig.{name}: expected an integer, got {value!r}") from None
    if isinstance(old, float) and isinstance(value, (str, int)):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"PolicyConfig.{name}: expected a number, got {value!r}") from None
    return value


def updated_policy(current: PolicyConfig, updates: dict[str, Any]) -> PolicyConfig:
    """A validated copy of ``current`` with ``updates`` applied; ValueError names a bad or unknown field."""
    names = {f.name for f in dataclasses.fields(PolicyConfig)}
    unknown = sorted(set(updates) - names)
    if unknown:
        raise ValueError(f"PolicyConfig: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    coerced = {k: _coerce_policy_value(current, k, v) for k, v in updates.items()}
    return dataclasses.replace(current, **coerced)


# Environment of engine worker processes, set before the Nanny spawns them (glibc reads it at start-up).
# Dask's default MALLOC_TRIM_THRESHOLD_ (64 KiB) hands freed memory back to the OS at once, so every received
# KV staging frame (>= 16 MB) lands in fresh pages that fault in; keeping freed buffers in the heap made
# worker-to-worker KV transfers about 1.5x faster here (benchmarks/kv_transfer.py).
WORKER_PRE_SPAWN_ENV: dict[str, int] = {
    "MALLOC_TRIM_THRESHOLD_": 1 << 30,
    "MALLOC_MMAP_THRESHOLD_": 1 << 25,
}


def worker_dask_config() -> dict[str, int]:
    """:data:`WORKER_PRE_SPAWN_ENV` as Dask config keys (``distributed.nanny.pre-spawn-environ.*``)."""
    return {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_PRE_SPAWN_ENV.items()}
