"""Priorities: S-S at 26 req/s, Gamma CV 4, 10% high-priority requests, 16 instances.
Llumnix (priorities on) vs Llumnix-base (priorities off) on the same trace.

    python benchmarks/priority_sim.py [--requests 10000] [--seeds 3] [--cv 4] [--headroom 320]

Targets (issue 2): high-priority mean request latency base/llumnix >= 1.2x (paper 1.2-1.5x, prefill P99
3.6-10x); normal requests pay at most +5% mean latency (paper <= 4.5%). With ``--seeds N`` both runs go over
N traces and the tables and ratios use the means over seeds (per-seed ratios are in the JSON). Writes
benchmarks/results/priority_sim.json.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import mean_over_seeds, print_rows, ratio, save, seed_list  # noqa: E402

from llumnix_dask.config import LatencyModel, PolicyConfig, SimConfig  # noqa: E402
from llumnix_dask.sim import simulate  # noqa: E402
from llumnix_dask.workloads import generate_trace  # noqa: E402

COLUMNS = [
    ("run", "run", 0), ("class", "class", 0), ("requests", "requests", 0),
    ("prefill_mean", "prefill mean", 3), ("prefill_p99", "prefill P99", 3),
    ("decode_mean", "decode mean", 4), ("decode_p99", "decode P99", 4),
    ("e2e_mean", "e2e mean", 3), ("e2e_p99", "e2e P99", 2), ("preemption_loss", "preempt loss", 3),
]


def rows_of(label: str, result, seed: int) -> list[dict]:
    out = []
    for cls, agg in result.by_priority().items():
        out.append({"run": label, "class": cls, "seed": seed, "requests": agg["requests"],
                    "prefill_mean": agg["prefill"]["mean"], "prefill_p99": agg["prefill"]["p99"],
                    "decode_mean": agg["decode"]["mean"], "decode_p99": agg["decode"]["p99"],
                    "e2e_mean": agg["e2e"]["mean"], "e2e_p99": agg["e2e"]["p99"],
                    "preemption_loss": agg["preemption_loss_s"],
                    "mem_util_mean": result.memory.get("util_mean")})
    return out


def summarize(rows: list[dict]) -> dict:
    by = {(r["run"], r["class"]): r for r in rows}
    base_h, prio_h = by[("llumnix-base", "high")], by[("llumnix", "high")]
    base_n, prio_n = by[("llumnix-base", "normal")], by[("llumnix", "normal")]
    return {
        "high_e2e_mean_speedup": ratio(base_h["e2e_mean"], prio_h["e2e_mean"]),
        "high_prefill_mean_speedup": ratio(base_h["prefill_mean"], prio_h["prefill_mean"]),
        "high_prefill_p99_speedup": ratio(base_h["prefill_p99"], prio_h["prefill_p99"]),
        "high_decode_mean_speedup": ratio(base_h["decode_mean"], prio_h["decode_mean"]),
        "normal_e2e_mean_penalty_pct": 100 * (ratio(prio_n["e2e_mean"], base_n["e2e_mean"]) - 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=26.0)
    ap.add_argument("--cv", type=float, default=4.0)
    ap.add_argument("--high", type=float, default=0.1)
    ap.add_argument("--headroom", type=int, default=PolicyConfig().priority_headroom_blocks)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (traces); tables show the mean")
    ap.add_argument("--decode-base-ms", type=float, default=None,
                    help="sensitivity study only: override LatencyModel.decode_base_ms (default: calibrated value)")
    ap.add_argument("--decode-ms-per-seq", type=float, default=None,
                    help="sensitivity study only: override LatencyModel.decode_ms_per_seq")
    args = ap.parse_args()
    latency = LatencyModel()
    if args.decode_base_ms is not None:
        latency = replace(latency, decode_base_ms=args.decode_base_ms)
    if args.decode_ms_per_seq is not None:
        latency = replace(latency, decode_ms_per_seq=args.decode_ms_per_seq)
    policy = PolicyConfig(priority_headroom_blocks=args.headroom)
    runs = {
        "llumnix-base": SimConfig(policy=replace(policy, priorities_enabled=False), latency=latency),
        "llumnix": SimConfig(policy=policy, latency=latency),
    }
    seed_rows, per_seed = [], []
    for seed in seed_list(args.seed, args.seeds):
        trace = generate_trace("S-S", args.requests, args.rate, "gamma", args.cv, args.high, seed)
        rows = []
        for label, cfg in runs.items():
            result = simulate(cfg, trace)
            rows += rows_of(label, result, seed)
            print(f"seed {seed} {label}: wall {result.wall_time_s:.1f} s", flush=True)
        per_seed.append({"seed": seed, **summarize(rows)})
        seed_rows += rows
    rows = mean_over_seeds(seed_rows, ("run", "class"))
    print(f"\n== mean over {args.seeds} seed(s)")
    print_rows(rows, COLUMNS)
    summary = summarize(rows)
    met = summary["high_e2e_mean_speedup"] >= 1.2 and summary["normal_e2e_mean_penalty_pct"] <= 5
    print(f"\nhigh-priority mean latency base/llumnix {summary['high_e2e_mean_speedup']:.3f}x (target >= 1.2x), "
          f"prefill mean {summary['high_prefill_mean_speedup']:.2f}x, "
          f"prefill P99 {summary['high_prefill_p99_speedup']:.2f}x, "
          f"decode mean {summary['high_decode_mean_speedup']:.3f}x; "
          f"normal mean latency penalty {summary['normal_e2e_mean_penalty_pct']:+.2f}% (target <= 5%) -> "
          f"{'MET' if met else 'MISSED'}")
    default = latency == LatencyModel() and args.headroom == PolicyConfig().priority_headroom_blocks
    name = "priority_sim" if default else f"priority_sim_sensitivity_headroom{args.headroom}"
    for p in per_seed:
        print(f"  seed {p['seed']}: high mean latency {p['high_e2e_mean_speedup']:.3f}x, "
              f"normal penalty {p['normal_e2e_mean_penalty_pct']:+.2f}%")
    save(name, {"args": vars(args), "latency": vars(latency), "rows": rows, "summary": summary, "met": met,
                "per_seed": per_seed, "per_seed_rows": seed_rows})


if __name__ == "__main__":
    main()
