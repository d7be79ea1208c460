"""What the simulator and the sim backend run on: the latency model of one engine instance, named engine
profiles (the paper's A10 / LLaMA-7B, an H100 / Llama-3-8B), the paper's policy parameters and the
simulator's own config, validated when built like those of :mod:`llumnix_dask.config`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from llumnix_dask.config import NON_MIGRATING_POLICIES, MigrationConfig, PolicyConfig, _check_positive, _fail


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


# LLaMA-7B fp16 on one A10 (24 GB), vLLM 0.2 as in the paper. Sources: the paper's figures (its Fig. 10
# operating points) and the public artifact (branch osdi24ae of the authors' repository).
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
#   line over batches 4-32 gives decode_ms_per_seq = 0.14 and 42.2 ms at ~8.2k tokens. (An earlier
#   reading of "43-53 ms" overstated the top; the earlier 0.32 ms/seq came from it.) The KV term is the memory roofline:
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
    * dispatch sees each instance's load as of its last step's report, not the requests sent to it since
      (``count_unreported_dispatches=False``: the artifact's dispatcher read its instance table as last updated,
      so the requests of a burst that arrive within one step all go to the instance that reported freest);
    * auto-scaling checks the band every 10 s and acts at once (``scaling_patience_s=0``);
    * the baselines (infaas, round_robin, random) never migrate, not even to drain an instance for a
      scale-down: it serves its requests to the end (``drain_by_migration=False``; the artifact's shutdown
      waits for them), where our default drains by migration under every policy.

    High-priority requests are dispatched by our rule (to the lightest real batch, see
    :mod:`llumnix_dask.policy.dispatch`), not the artifact's, which showed them the headroom on the instances
    holding *no* high-priority request: in the simulator that piled every high-priority request onto one
    instance until it was full (their mean latency 0.43x of Llumnix-base's at CV 2-4).

    Where our defaults (``PolicyConfig()``) differ, and why: thresholds 10 / 60 (a gap, so a request that
    moved does not make its destination a source at the next tick - on a shared cluster of different
    instance sizes); selection "SR" (least KV to copy, what a slow network wants); requests sent since an
    instance's last report count on it (bursts spread out); 50 ms ticks (our migration
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
            "migrate_high_priority": False, "count_unreported_dispatches": False}
    if overrides.get("dispatch") in NON_MIGRATING_POLICIES:
        base["drain_by_migration"] = False  # the baselines never migrated, not even to scale down
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
    # Lifetime of a newly added instance before it serves (scale-up cold start), seconds. The paper gives no
    # figure; 10 s is an assumption: reading 13.5 GB of fp16 weights takes ~7 s at ~2 GB/s (a local NVMe
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

    @property
    def watermark_blocks(self) -> int:
        """The blocks an instance keeps free when it admits a queued request."""
        return int(self.admission_watermark * self.blocks_per_instance)

    @property
    def max_request_tokens(self) -> int:
        """The longest request (prompt + output tokens) one instance can hold: its blocks less the admission
        watermark. Pass it to :func:`~llumnix_dask.workloads.generate_trace` for ShareGPT-like traces."""
        return (self.blocks_per_instance - self.watermark_blocks) * self.block_size

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
