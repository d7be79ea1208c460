"""The body of ``llumnix-dask sim``: build a config from command-line values, run, print, save."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from llumnix_dask.config import PolicyConfig
from llumnix_dask.sim_config import SimConfig, paper_policy
from llumnix_dask.sim.metrics import SimResult


def parse_band(text: str | None) -> tuple[float, float] | None:
    """``"25,75"`` -> (25.0, 75.0); None -> None (scaling off)."""
    if text is None or text == "":
        return None
    parts = text.split(",")
    if len(parts) != 2:
        raise ValueError(f"scale_band: expected 'x,y' (e.g. 25,75), got {text!r}")
    try:
        x, y = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"scale_band: expected two numbers 'x,y', got {text!r}") from None
    if x > y:
        raise ValueError(f"scale_band: x must be <= y, got x={x:g} > y={y:g}")
    return x, y


def build_sim_config(
    instances: int = 16,
    policy: str = "llumnix",
    scale_band: str | None = None,
    min_instances: int = 1,
    max_instances: int = 16,
    request_selection: str | None = None,
    priorities: bool = True,
    seed: int = 0,
    preset: str = "paper",
    trace: str | None = None,
    profile: str = "a10-llama-7b",
    blocks: int | None = None,
    max_batched_tokens: int | None = None,
    max_batch_size: int | None = None,
    watermark: float | None = None,
) -> SimConfig:
    """A SimConfig from CLI-style values; raises ValueError naming the bad one.

    ``preset``: "paper" (the paper's policy parameters for ``trace``, :func:`~llumnix_dask.sim_config.paper_policy`)
    or "default" (``PolicyConfig()``); ``profile``: an engine profile of
    :data:`~llumnix_dask.config.ENGINE_PROFILES`; ``blocks`` ... ``watermark`` override the profile.
    """
    band = parse_band(scale_band)
    knobs = {"dispatch": policy, "priorities_enabled": priorities, "random_seed": seed}
    if request_selection is not None:
        knobs["request_selection"] = request_selection
    if preset == "paper":
        pol = paper_policy(trace, **knobs)
    elif preset == "default":
        pol = PolicyConfig(**knobs)
    else:
        raise ValueError(f"preset: unknown preset {preset!r}; choose one of default, paper")
    if band is not None:
        if not min_instances <= instances <= max_instances:
            raise ValueError(f"instances: the starting count {instances} must lie in [min_instances={min_instances}, "
                             f"max_instances={max_instances}]")
        pol = replace(pol, scaling_enabled=True, scale_up_freeness=band[0], scale_down_freeness=band[1],
                      min_instances=min_instances, max_instances=max_instances)
    overrides = {k: v for k, v in (("blocks_per_instance", blocks), ("max_batched_tokens", max_batched_tokens),
                                   ("max_batch_size", max_batch_size), ("admission_watermark", watermark))
                 if v is not None}
    return SimConfig.for_profile(profile, num_instances=instances, policy=pol, seed=seed, **overrides)


def result_table(results: dict[str, SimResult], title: str = "simulation"):
    """A rich Table: one row per (label, priority class), latencies in seconds."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("run", "class", "requests", "prefill mean", "prefill P99", "decode mean", "decode P99",
                "e2e mean", "e2e P99", "preempt loss", "avg inst", "frag %", "migrations"):
        table.add_column(col, justify="right" if col not in ("run", "class") else "left")
    fmt = lambda v, p=3: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{p}f}"  # noqa: E731
    for label, res in results.items():
        groups = {"all": res.overall, **(res.by_priority() if res.requests["priority"].nunique() > 1 else {})}
        for i, (cls, agg) in enumerate(groups.items()):
            mig = res.migrations
            table.add_row(
                label if i == 0 else "", cls, str(agg["requests"]),
                fmt(agg["prefill"]["mean"]), fmt(agg["prefill"]["p99"]),
                fmt(agg["decode"]["mean"], 4), fmt(agg["decode"]["p99"], 4),
                fmt(agg["e2e"]["mean"], 2), fmt(agg["e2e"]["p99"], 2),
                fmt(agg["preemption_loss_s"]),
                fmt(res.average_instances, 2) if i == 0 else "",
                fmt(100 * res.fragmentation, 2) if i == 0 else "",
                str(mig["committed"] + mig["queued_moves"]) if i == 0 else "",
            )
    return table


def run_sim_command(
    trace: str, rate: float, arrival: str, cv: float, instances: int, requests: int, policy: str,
    scale_band: str | None, min_instances: int, max_instances: int, high_priority: float, selection: str | None,
    seed: int, out: Path | None, progress: bool, preset: str = "paper", profile: str = "a10-llama-7b",
    blocks: int | None = None, max_batched_tokens: int | None = None, max_batch_size: int | None = None,
    watermark: float | None = None,
) -> SimResult:
    """Validate, run one simulation with a progress bar, print the table, write --out files."""
    from rich.console import Console

    from llumnix_dask.sim.simulator import simulate
    from llumnix_dask.workloads import load_trace

    if not (isinstance(rate, (int, float)) and rate > 0):
        raise ValueError(f"rate: must be > 0 requests/s, got {rate!r}")
    if requests < 1:
        raise ValueError(f"requests: must be >= 1, got {requests}")
    config = build_sim_config(instances, policy, scale_band, min_instances, max_instances, selection, seed=seed,
                              preset=preset, trace=trace, profile=profile, blocks=blocks,
                              max_batched_tokens=max_batched_tokens, max_batch_size=max_batch_size,
                              watermark=watermark)
    workload = load_trace(trace, requests, rate, arrival, cv, high_priority, seed,
                          max_request_tokens=config.max_request_tokens)
    result = simulate(config, workload, progress=progress)
    console = Console()
    if not console.is_terminal:  # piped / captured: do not squeeze the table into 80 columns
        console = Console(width=180)
    console.print(result_table({policy: result}, title=f"{workload.name}: {requests} requests, {instances} instances"))
    console.print(f"simulated {result.sim_time_s:.0f} s in {result.wall_time_s:.1f} s wall")
    if out is not None:
        paths = result.save(out, "sim")
        console.print("wrote " + ", ".join(str(p) for p in paths.values()))
    return result
