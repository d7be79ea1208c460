"""What a simulation measured: per-request rows, aggregates (mean / P99, split by priority), CDF plots.

Definitions (the paper's section 6): prefill latency = time to first token including queueing; decode latency = a
request's mean time per output token after the first; request latency = end to end; preemption loss =
per preemption the wait until re-prefill plus the recompute time, summed and divided by the number of all
requests; fragmentation = share of all KV blocks that are free on instances whose head-of-line queued
request does not fit (sampled over time); memory utilisation = used KV blocks / total per instance, sampled
every ``SimConfig.sample_interval_s``; cost = average number of instances (starting, serving and
draining ones all count).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LATENCY_COLUMNS = ("prefill_s", "decode_s", "e2e_s")


def summarize(values: np.ndarray) -> dict[str, float]:
    """Mean, P99, P99.9 and max of the finite values (NaN if there are none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": float("nan"), "p99": float("nan"), "p999": float("nan"), "max": float("nan")}
    p99, p999 = np.percentile(v, [99, 99.9])
    return {"mean": float(v.mean()), "p99": float(p99), "p999": float(p999), "max": float(v.max())}


def aggregate(df: pd.DataFrame) -> dict[str, Any]:
    """Mean / P99 of each latency and the preemption loss over the rows of ``df``."""
    out: dict[str, Any] = {"requests": int(len(df))}
    for col in LATENCY_COLUMNS:
        out[col.removesuffix("_s")] = summarize(df[col].to_numpy()) if len(df) else summarize(np.array([]))
    out["preemption_loss_s"] = float(df["preemption_loss_s"].sum() / len(df)) if len(df) else 0.0
    out["preemptions"] = int(df["preemptions"].sum()) if len(df) else 0
    return out


@dataclass
class SimResult:
    """Outcome of one simulation run. ``requests`` is one row per request (see :func:`aggregate`)."""

    config: dict
    trace: dict
    requests: pd.DataFrame = field(repr=False)
    average_instances: float
    fragmentation: float
    migrations: dict
    sim_time_s: float
    wall_time_s: float
    scaling_events: list = field(default_factory=list)
    # Sampled memory state (see Simulator._on_sample): utilisation quantiles over (instance, sample) pairs,
    # the share of samples with a queued request, and a coarse time series (mean / min / max per sample).
    memory: dict = field(default_factory=dict)

    @property
    def overall(self) -> dict[str, Any]:
        return aggregate(self.requests)

    def by_priority(self) -> dict[str, dict[str, Any]]:
        return {name: aggregate(g) for name, g in self.requests.groupby("priority")}

    def to_dict(self) -> dict[str, Any]:
        """Everything but the per-request rows, JSON-ready."""
        return {
            "config": self.config,
            "trace": self.trace,
            "overall": self.overall,
            "by_priority": self.by_priority(),
            "average_instances": self.average_instances,
            "fragmentation": self.fragmentation,
            "migrations": self.migrations,
            "sim_time_s": self.sim_time_s,
            "wall_time_s": self.wall_time_s,
            "scaling_events": self.scaling_events,
            "memory": self.memory,
        }

    def save(self, out_dir: str | Path, name: str = "sim") -> dict[str, Path]:
        """Write ``<name>.json``, ``<name>_requests.csv`` and ``<name>_cdf.png`` into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / f"{name}.json", "csv": out / f"{name}_requests.csv", "png": out / f"{name}_cdf.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        self.requests.to_csv(paths["csv"], index=False)
        plot_latency_cdfs({self.trace.get("name", name): self}, paths["png"])
        return paths


def build_result(sim: Any, end: float, wall: float) -> SimResult:
    """The SimResult of a finished :class:`~llumnix_dask.sim.simulator.Simulator` run (``end``: simulated
    time of the last token, ``wall``: seconds it took)."""
    tr = sim.trace
    out = tr.output_lens.astype(np.float64)
    arrival = tr.arrival_s
    with np.errstate(invalid="ignore", divide="ignore"):
        decode = np.where(out > 1, (sim._finish - sim._first) / (out - 1), np.nan)
    df = pd.DataFrame({
        "request_id": [f"r{i}" for i in range(len(tr))],
        "arrival_s": arrival,
        "input_len": tr.input_lens,
        "output_len": tr.output_lens,
        "priority": np.where(tr.high_priority, "high", "normal"),
        "prefill_s": sim._first - arrival,
        "decode_s": decode,
        "e2e_s": sim._finish - arrival,
        "preemptions": sim._preemptions,
        "preemption_loss_s": sim._loss,
        "migrations": sim._migrated,
        "instance": sim._instance,
        "finished": np.isfinite(sim._finish),
    })
    frag = sim.samples["fragmentation"]
    return SimResult(
        config=_plain(asdict(sim.config)),
        trace=tr.describe(),
        requests=df,
        average_instances=sim._instances_area / end if end > 0 else float(sim.config.num_instances),
        fragmentation=float(np.mean(frag)) if frag else 0.0,
        migrations=sim.migrations.stats.to_dict(),
        sim_time_s=end,
        wall_time_s=wall,
        scaling_events=sim.scaling_events,
        memory=_memory_summary(sim.samples),
    )


def _memory_summary(samples: dict) -> dict:
    u = np.asarray(samples["util"])
    if not len(u):
        return {}
    q = np.percentile(u, [50, 90, 99])
    series = samples["series"]
    step = max(1, len(series) // 200)  # keep the JSON small: ~200 points
    return {
        "util_mean": float(u.mean()), "util_p50": float(q[0]), "util_p90": float(q[1]), "util_p99": float(q[2]),
        "share_over_90pct": float((u > 0.9).mean()),
        "share_with_queue": samples["queued"][0] / len(u),
        "series": [[round(x, 3) for x in p] for p in series[::step]],
    }


def _plain(d: dict) -> dict:
    """JSON-friendly copy (inf -> None)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _plain(v)
        elif isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    return str(value)


def plot_latency_cdfs(results: dict[str, SimResult], path: str | Path) -> Path:
    """One PNG with the CDFs of prefill, decode and end-to-end latency, one line per labelled result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    titles = {"prefill_s": "prefill latency (s)", "decode_s": "decode latency (s/token)",
              "e2e_s": "request latency (s)"}
    for label, result in results.items():
        for ax, col in zip(axes, LATENCY_COLUMNS):
            v = result.requests[col].to_numpy(dtype=np.float64)
            v = np.sort(v[np.isfinite(v)])
            if len(v):
                ax.plot(v, np.arange(1, len(v) + 1) / len(v), label=label)
    for ax, col in zip(axes, LATENCY_COLUMNS):
        ax.set_xlabel(titles[col])
        ax.set_ylabel("CDF")
        ax.set_xscale("symlog", linthresh=1e-2)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
