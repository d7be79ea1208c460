"""The configuration records a user sets (engine, policy, migration, frontend, server, simulator), validated
when built.

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
class LatencyModel:
    """Step latency of one engine instance, for the simulator and the sim backend.

    A step's time is the engine's model time plus the serving loop's own work around it:

    * prefill step over ``tokens`` prompt (or recomputed) tokens of ``n`` requests:
      ``prefill_base_ms + prefill_ms_per_token * tokens`` (compute bound) + the step overhead;
    * decode step over a batch of ``n`` requests holding ``kv`` KV tokens:
      ``max(decode_base_ms + decode_ms_per_seq * n + decode_ms_per_kv_token * kv, n * prefill_ms_per_token)``
      (reading the weights once, a per-sequence cost, reading every KV token; never faster than the batch's
      compute) + the step overhead;
    * step overhead: ``step_overhead_ms + step_overhead_ms_per_seq * n`` - what a served engine spends per
      step outside the model (scheduling the batch, handing every request's output to the frontend), which the
      engine's own step timer does not see but every client does;
    * live migration: ``migration_stage_overhead_ms + migration_ms_per_block * blocks`` per stage, and a
      downtime of ``migration_commit_ms + migration_ms_per_block * blocks`` for the last (paused) stage.

    The defaults are the calibrated A10 / LLaMA-7B numbers of :data:`A10_LLAMA_7B` (see there for the sources);
    :data:`ENGINE_PROFILES` has a current GPU too.

        >>> lat = LatencyModel()
        >>> round(lat.engine_decode_ms(1, 8192), 1), round(lat.engine_decode_ms(32, 8192), 1)  # Fig. 10's window
        (42.4, 46.7)
        >>> round(lat.decode_step_ms(16, 4096), 1)  # what a client sees per token
        48.8
    """

    prefill_base_ms: float = 0.0
    prefill_ms_per_token: float = 0.24
    decode_base_ms: float = 32.0
    decode_ms_per_seq: float = 0.14
    decode_ms_per_kv_token: float = 0.00125
    step_overhead_ms: float = 3.0
    step_overhead_ms_per_seq: float = 0.4
    migration_ms_per_block: float = 3.25
    migration_stage_overhead_ms: float = 16.0
    migration_commit_ms: float = 10.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_positive(self, f.name, allow_zero=True)

    def step_overhead(self, seqs: int) -> float:
        """The serving loop's time (ms) around one step of ``seqs`` requests."""
        return self.step_overhead_ms + self.step_overhead_ms_per_seq * seqs

    def engine_prefill_ms(self, tokens: int, seqs: int = 1) -> float:
        """The engine's model time of one prefill step: its compute, but never less than reading the weights
        once (a forward pass over a short prompt costs what a decode step without KV does)."""
        return max(self.prefill_base_ms + self.prefill_ms_per_token * tokens,
                   self.decode_base_ms + self.decode_ms_per_seq * seqs)

    def prefill_step_ms(self, tokens: int, seqs: int = 1) -> float:
        """Time of one prefill step over ``tokens`` prompt (or recomputed) tokens of ``seqs`` requests."""
        return self.engine_prefill_ms(tokens, seqs) + self.step_overhead(seqs)

    def engine_decode_ms(self, batch: int, kv_tokens: int) -> float:
        """The engine's model time of one decode step (what its own step timer measures, Fig. 10)."""
        memory = self.decode_base_ms + self.decode_ms_per_seq * batch + self.decode_ms_per_kv_token * kv_tokens
        return max(memory, self.prefill_ms_per_token * batch)

    def decode_step_ms(self, batch: int, kv_tokens: int) -> float:
        """Time of one decode step of ``batch`` requests holding ``kv_tokens`` KV tokens in all, overhead included."""
        return self.engine_decode_ms(batch, kv_tokens) + self.step_overhead(batch)


@dataclass(frozen=True)
class EngineProfile:
    """One GPU + model as the simulator sees it: KV capacity, engine limits and step latency.

    Pick one by name with :func:`engine_profile` or pass it to :meth:`SimConfig.for_profile`::

        >>> p = engine_profile("a10-llama-7b")
        >>> p.num_blocks, p.max_batched_tokens, p.num_blocks * p.block_size
        (785, 12800, 12560)
        >>> SimConfig.for_profile("h100-llama-3-8b").blocks_per_instance
        24800
    """

    name: str
    num_blocks: int  # KV blocks per instance
    max_batched_tokens: int  # prefill tokens per step (vLLM's max_num_batched_tokens)
    latency: LatencyModel
    block_size: int = 16
    max_batch_size: int = 256  # vLLM's max_num_seqs
    admission_watermark: float = 0.01  # vLLM's block-manager watermark (share of all blocks kept free)
    description: str = ""

    def __post_init__(self) -> None:
        for name in ("num_blocks", "max_batched_tokens", "block_size", "max_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _fail(self, name, f"must be an integer >= 1, got {value!r}")
        if not 0.0 <= self.admission_watermark < 1.0:
            _fail(self, "admission_watermark", f"must be in [0, 1), got {self.admission_watermark!r}")


# LLaMA-7B fp16 on one A10 (24 GB), vLLM 0.2 as in the paper. Sources: REFERENCE.md's anchors, the paper's
# Fig. 10 operating points and the public artifact (branch osdi24ae of the authors' repository).
#
# * Capacity: the artifact's profile of this pair at gpu_memory_utilization 0.9 has 862 / 831 / 792 blocks at
#   4,400 / 8,700 / 12,000 batched tokens (activations grow with the budget, ~0.0092 blocks per token);
#   extrapolated to the 12,800 of the serving runs: 792 - 800 x 0.0092 = 785 blocks (12,560 tokens). Cross
#   check: 0.9 x 22.5 GiB - 12.55 GiB weights - ~1.5 GiB activations = ~6.2 GiB / 512 KiB per token.
# * Prefill is compute bound and close to linear: 256 tokens ~58 ms and 8k tokens ~2.0 s lie on a line through
#   the origin of slope ~0.24 ms/token (44% of the A10's 125 TFLOPs fp16 tensor peak).
# * Decode, the engine's step (``engine_decode_ms``): the artifact's own measurements behind Fig. 10
#   (artifact/62_migration_efficiency/plot/plot.py, the 7B "Normal" series) hold ~8.2k KV tokens in every case
#   and take 43.6 / 42.9 / 42.85 / 43.3 / 44.4 / 46.8 ms for 1 x 8k, 2 x 4k ... 32 x 256 tokens: a least-squares
#   line over batches 4-32 gives decode_ms_per_seq = 0.14 and 42.2 ms at ~8.2k tokens. (REFERENCE.md's
#   "43-53 ms" overstated the top; the earlier 0.32 ms/seq came from it.) The KV term is the memory roofline:
#   512 KiB per token at ~70% of the A10's 600 GB/s = 1.25 us/token (10.3 ms for 8.2k tokens), leaving 32 ms for
#   the weights (13.5 GB at 70% of peak, the same efficiency). A prefill step can not be faster than reading
#   the weights once either (``engine_prefill_ms``: a 35-token prompt costs ~32 ms, not 8).
# * The serving loop's work per step (``step_overhead_ms`` + ``step_overhead_ms_per_seq`` per request): the
#   artifact times a step from the model call to the end of sampling (llm_engine.py, ``instance_info.latency``,
#   which is what Fig. 10 plots), but its clients time every token (entrypoints/api_server.py, generate_v2), and
#   between two steps the engine also schedules the batch and builds its inputs, builds and ships one
#   RequestOutput per request through Ray, and the one API-server event loop that drives every instance wakes
#   each request's coroutine. So the artifact's INFaaS++ decode means (0.047-0.060 s at the lowest rates) sit
#   7-20 ms above what the engine's timer alone gives (0.039-0.042 s), more for the traces with bigger batches.
#   The two constants are fitted to those five lowest-rate points (``benchmarks/paper_sim.py --calibrate``: the
#   least-RMS point of a grid, 3 ms + 0.4 ms per request, RMS error 7.3%; S-S stays 15% low, no grid point
#   lifts it without overshooting the others); the other 30 rates, P99 prefill and preemption loss stay out of
#   the fit and are the validation.
# * Migration: the artifact's 7B blocking copy takes 68 / 129 / 226 / 451 / 909 / 1682 ms for 256 ... 8k tokens
#   (plot.py) -> 3.25 ms per 16-token block + ~16 ms per stage; its live migration's downtime is 13-26 ms
#   (the same file) -> a 10 ms commit + the few blocks of the last stage.
A10_LLAMA_7B = EngineProfile(
    "a10-llama-7b", num_blocks=785, max_batched_tokens=12_800, latency=LatencyModel(),
    description="LLaMA-7B fp16 on one A10 24 GB, vLLM 0.2 (the paper's serving runs, 12,800 batched tokens)",
)
# The paper's priority and scaling runs used 12,000 batched tokens: 792 blocks (the artifact's own profile).
A10_LLAMA_7B_12K = dataclasses.replace(
    A10_LLAMA_7B, name="a10-llama-7b-12k", num_blocks=792, max_batched_tokens=12_000,
    description="LLaMA-7B fp16 on one A10 24 GB, 12,000 batched tokens (the paper's priority and scaling runs)",
)
# Llama-3-8B bf16 on one H100 SXM 80 GB, from published figures (a starting point for your own hardware;
# measure yours with benchmarks/engine_throughput.py and override):
# * KV: 32 layers x 8 KV heads x 128 dims x 2 (K, V) x 2 bytes = 128 KiB per token (grouped-query attention).
#   0.9 x 80 GB - 16.1 GB weights - ~4 GB activations ~= 52 GB -> ~397k tokens = 24,800 blocks of 16.
# * Prefill: 2 x 8.0e9 FLOPs per token at ~50% of the 989 TFLOPs bf16 dense peak -> 0.032 ms/token.
# * Decode: 16.1 GB of weights at ~70% of 3.35 TB/s = 6.9 ms; 128 KiB per KV token at that rate = 0.056 us;
#   ~0.02 ms per sequence (CUDA graphs keep the CPU work small) - ~7 ms per step at batch 1, the inter-token
#   latency vLLM reports for this pair. No separate serving-loop overhead: vLLM V1 prepares the next step and
#   streams outputs while the GPU runs, so that inter-token latency already includes it.
# * Migration: ~25 GB/s between GPUs (PCIe 5 / NCCL) -> 2 MiB per block in ~0.08 ms; 5 ms of handshake.
H100_LLAMA3_8B = EngineProfile(
    "h100-llama-3-8b", num_blocks=24_800, max_batched_tokens=8_192,
    latency=LatencyModel(prefill_ms_per_token=0.032, decode_base_ms=6.9, decode_ms_per_seq=0.02,
                         decode_ms_per_kv_token=0.000056, step_overhead_ms=0.0, step_overhead_ms_per_seq=0.0,
                         migration_ms_per_block=0.08, migration_stage_overhead_ms=1.0, migration_commit_ms=5.0),
    description="Llama-3-8B bf16 on one H100 SXM 80 GB (published figures)",
)
ENGINE_PROFILES: dict[str, EngineProfile] = {p.name: p for p in (A10_LLAMA_7B, A10_LLAMA_7B_12K, H100_LLAMA3_8B)}


def engine_profile(name: str) -> EngineProfile:
    """The named profile of :data:`ENGINE_PROFILES`; ValueError lists the names."""
    if name not in ENGINE_PROFILES:
        raise ValueError(f"engine profile: unknown profile {name!r}; choose one of {', '.join(ENGINE_PROFILES)}")
    return ENGINE_PROFILES[name]


# -- the paper's policy parameters ---------------------------------------------------------------------
# Traces whose migration threshold was 10 blocks per request in the artifact's run scripts (3 for the others).
PAPER_HIGH_THRESHOLD_TRACES = ("M-M", "S-L")


def paper_policy(trace: str | None = None, **overrides: Any) -> PolicyConfig:
    """The policy parameters of the paper's runs (the artifact's run scripts), as a :class:`PolicyConfig`.

    * one migration threshold for both sides - a source is below it, a destination above it: 10 blocks per
      request for M-M and S-L, 3 for the other traces (``trace`` picks it; 3 when None);
    * an instance holding preempted requests is always a source, never a destination (as by default);
    * pairs re-planned every 4 rounds of engine steps: ``migration_interval_s`` 0.2 s (4 x ~50 ms steps);
    * the migrated request is the newest running normal-priority one (``request_selection="LCR"``,
      ``migrate_high_priority=False``);
    * an instance holding high-priority requests counts as if it had only 100 blocks (``total - 100`` blocks
      of headroom: ``priority_instance_blocks=100``);
    * auto-scaling checks the band every 10 s and acts at once (``scaling_patience_s=0``).

    High-priority requests are dispatched by our rule (to the lightest real batch, see
    :mod:`llumnix_dask.policy.dispatch`), not the artifact's, which showed them the headroom on the instances
    holding *no* high-priority request: in the simulator that piled every high-priority request onto one
    instance until it was full (their mean latency 0.43x of Llumnix-base's at CV 2-4).

    Where our defaults (``PolicyConfig()``) differ, and why: thresholds 10 / 60 (a gap, so a request that
    moved does not make its destination a source at the next tick - on a shared cluster of different
    instance sizes); selection "SR" (least KV to copy, what a slow network wants); 50 ms ticks (our migration
    is asynchronous, a tick costs little); headroom 320 blocks per high-priority request (scales with how many
    there are instead of reserving most of an instance for the first one); a scaling patience of 30 s (one
burst should not buy an instance that takes seconds to start)::

        >>> p = paper_policy("M-M")
        >>> p.migrate_out_freeness, p.migrate_in_freeness, p.request_selection, p.priority_instance_blocks
        (10.0, 10.0, 'LCR', 100)
        >>> paper_policy("L-L", dispatch="infaas").migrate_out_freeness
        3.0
    """
    threshold = 10.0 if trace in PAPER_HIGH_THRESHOLD_TRACES else 3.0
    base = {"migrate_out_freeness": threshold, "migrate_in_freeness": threshold, "request_selection": "LCR",
            "migration_interval_s": 0.2, "priority_instance_blocks": 100, "scaling_patience_s": 0.0,
            "migrate_high_priority": False}
    return PolicyConfig(**{**base, **overrides})


@dataclass(frozen=True)
class SimConfig:
    """The discrete-event simulator: N instances of one engine profile (default: the paper's A10 / LLaMA-7B).

    Build one for another profile with :meth:`for_profile`; the paper's setup with :meth:`paper`.
    """

    num_instances: int = 16
    blocks_per_instance: int = A10_LLAMA_7B.num_blocks
    block_size: int = 16
    max_batch_size: int = A10_LLAMA_7B.max_batch_size
    max_batched_tokens: int = A10_LLAMA_7B.max_batched_tokens
    latency: LatencyModel = field(default_factory=LatencyModel)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    migration: MigrationConfig = field(default_factory=MigrationConfig)
    # vLLM admits a queued request only if its blocks fit while leaving this share of all blocks free (vLLM's
    # default watermark, 1%): decode steps then rarely preempt right after an admission.
    admission_watermark: float = A10_LLAMA_7B.admission_watermark
    # Lifetime of a newly added instance before it serves (scale-up cold start), seconds. REFERENCE.md gives
    # no figure; 10 s is an assumption: reading 13.5 GB of fp16 weights takes ~7 s at ~2 GB/s (a local NVMe
    # SSD) plus a few seconds of engine start. benchmarks/scaling_sim.py --startup shows the sensitivity.
    instance_startup_s: float = 10.0
    seed: int = 0
    # Simulated seconds between samples of the cluster state (fragmentation).
    sample_interval_s: float = 1.0

    def __post_init__(self) -> None:
        for name in ("num_instances", "blocks_per_instance", "block_size", "max_batch_size", "max_batched_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                _fail(self, name, f"must be an integer >= 1, got {value!r}")
        _check_positive(self, "instance_startup_s", allow_zero=True)
        _check_positive(self, "sample_interval_s")
        if not 0.0 <= self.admission_watermark < 1.0:
            _fail(self, "admission_watermark", f"must be in [0, 1), got {self.admission_watermark!r}")

    @classmethod
    def for_profile(cls, profile: str | EngineProfile, **overrides: Any) -> "SimConfig":
        """A config whose instances are ``profile`` (a name of :data:`ENGINE_PROFILES` or a profile)."""
        p = engine_profile(profile) if isinstance(profile, str) else profile
        base = {"blocks_per_instance": p.num_blocks, "block_size": p.block_size, "max_batch_size": p.max_batch_size,
                "max_batched_tokens": p.max_batched_tokens, "latency": p.latency,
                "admission_watermark": p.admission_watermark}
        return cls(**{**base, **overrides})

    @classmethod
    def paper(cls, trace: str | None = None, dispatch: str = "llumnix", **overrides: Any) -> "SimConfig":
        """The paper's serving setup: 16 A10 / LLaMA-7B instances (12,800 batched tokens, 785 blocks) under
        :func:`paper_policy` for ``trace``, with ``dispatch`` (llumnix, infaas, round_robin)::

            >>> cfg = SimConfig.paper("L-L", dispatch="infaas")
            >>> cfg.blocks_per_instance, cfg.policy.dispatch, cfg.policy.migrate_in_freeness
            (785, 'infaas', 3.0)
        """
        policy = overrides.pop("policy", None) or paper_policy(trace, dispatch=dispatch)
        return cls.for_profile(overrides.pop("profile", A10_LLAMA_7B), policy=policy, **overrides)


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
