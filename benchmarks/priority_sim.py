"""Priorities (Fig. 13) in the simulator: S-S at 26 req/s, Gamma arrivals with CV 2/4/6/8, 10% of the requests
high priority, 16 A10 / LLaMA-7B instances at 12,000 batched tokens (792 blocks), the paper's policy
parameters. Llumnix (priorities on: high-priority requests first in the local queue, their instances keep a
batch of ~100 blocks) vs Llumnix-base (priorities off) on the same traces, >= 3 seeds.

    python benchmarks/priority_sim.py              # 4 CVs x 3 seeds x 10k requests (~2 min)
    python benchmarks/priority_sim.py --quick      # CV 2 and 8, 1 seed, 3,000 requests

Targets (issue 12): high-priority mean request latency base/Llumnix >= 1.2x at every CV (paper 1.2-1.5x,
prefill P99 3.6-10x); normal requests pay at most +5% mean latency (paper <= 4.5%). Writes
benchmarks/results/priority_sim.json, .png (a row per class, a column per metric, CV on the x axis) and .txt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import print_rows, ratio, save, seed_list  # noqa: E402
from _sim_sweep import Tee, plot_grid, results_dir, run_all, spread  # noqa: E402

from llumnix_dask.sim_config import A10_LLAMA_7B_12K, SimConfig, paper_policy  # noqa: E402
from llumnix_dask.sim import simulate  # noqa: E402
from llumnix_dask.workloads import generate_trace  # noqa: E402

CVS = (2.0, 4.0, 6.0, 8.0)
RUNS = {"llumnix": True, "llumnix-base": False}  # label -> priorities_enabled
CLASS_FIELDS = ("e2e_mean", "e2e_p99", "prefill_mean", "prefill_p99", "decode_mean", "decode_p99", "preemption_loss")
PANELS = [("e2e_mean", "Request Mean"), ("e2e_p99", "Request P99"), ("prefill_mean", "Prefill Mean"),
          ("prefill_p99", "Prefill P99"), ("decode_mean", "Decode Mean"), ("decode_p99", "Decode P99")]


def by_class(result) -> dict:
    out = {}
    for cls, agg in result.by_priority().items():
        for f in CLASS_FIELDS:
            key = f.removesuffix("_mean").removesuffix("_p99")
            out[f"{cls}_{f}"] = agg["preemption_loss_s"] if f == "preemption_loss" else agg[key][f.rsplit("_", 1)[1]]
    return out


def config(priorities: bool) -> SimConfig:
    return SimConfig.for_profile(A10_LLAMA_7B_12K, policy=paper_policy("S-S", priorities_enabled=priorities))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=26.0)
    ap.add_argument("--cvs", default=",".join(f"{c:g}" for c in CVS))
    ap.add_argument("--high", type=float, default=0.1, help="share of high-priority requests")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="CV 2 and 8, 1 seed, 3,000 requests")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    cvs = [2.0, 8.0] if args.quick else [float(c) for c in args.cvs.split(",")]
    seeds = [args.seed] if args.quick else seed_list(args.seed, args.seeds)
    requests = 3_000 if args.quick else args.requests
    name = "priority_sim_quick" if args.quick else "priority_sim"
    jobs = []
    for cv in cvs:
        for seed in seeds:
            for label, prio in RUNS.items():
                jobs.append(({"cv": cv, "run": label, "seed": seed},
                             lambda cv=cv, seed=seed, prio=prio: simulate(config(prio), generate_trace(
                                 "S-S", requests, args.rate, "gamma", cv, args.high, seed))))
    with Tee() as tee:
        print(f"== S-S {args.rate:g} req/s, gamma CV {cvs}, {args.high:.0%} high priority, {requests} requests, "
              f"seeds {seeds}, 16 x a10-llama-7b-12k, paper policy parameters")
        per_seed = run_all(jobs, progress=not args.no_progress, extra=by_class)
        fields = [f"{c}_{f}" for c in ("high", "normal") for f in CLASS_FIELDS]
        rows = spread(per_seed, ("cv", "run"), fields)
        cols = [("cv", "CV", 0), ("run", "run", 0)]
        for cls in ("high", "normal"):
            print(f"\n== {cls}-priority requests: mean over seeds")
            print_rows(rows, cols + [(f"{cls}_{f}", f.replace("_", " "), 3) for f in CLASS_FIELDS])
        summary = []
        for cv in cvs:
            by = {r["run"]: r for r in rows if r["cv"] == cv}
            base, prio = by["llumnix-base"], by["llumnix"]
            per = [ratio(b, p) for b, p in zip(base["high_e2e_mean_seeds"], prio["high_e2e_mean_seeds"])]
            summary.append({
                "cv": cv,
                "high_e2e_mean_x": ratio(base["high_e2e_mean"], prio["high_e2e_mean"]),
                "high_e2e_mean_x_seeds": per,
                "high_prefill_p99_x": ratio(base["high_prefill_p99"], prio["high_prefill_p99"]),
                "high_decode_mean_x": ratio(base["high_decode_mean"], prio["high_decode_mean"]),
                "normal_e2e_mean_penalty_pct": 100 * (ratio(prio["normal_e2e_mean"], base["normal_e2e_mean"]) - 1),
            })
        print("\n== Llumnix vs Llumnix-base (ratios of seed means; high x > 1: faster with priorities)")
        print_rows(summary, [("cv", "CV", 0), ("high_e2e_mean_x", "high mean latency x", 3),
                             ("high_prefill_p99_x", "high prefill P99 x", 2),
                             ("high_decode_mean_x", "high decode mean x", 3),
                             ("normal_e2e_mean_penalty_pct", "normal mean latency +%", 2)])
        met_high = all(s["high_e2e_mean_x"] >= 1.2 for s in summary)
        met_normal = all(s["normal_e2e_mean_penalty_pct"] <= 5 for s in summary)
        print(f"\n  {'MET   ' if met_high else 'MISSED'} high-priority mean latency >= 1.2x better at every CV: "
              + ", ".join(f"CV {s['cv']:g} {s['high_e2e_mean_x']:.2f}x" for s in summary))
        print(f"  {'MET   ' if met_normal else 'MISSED'} normal-request penalty <= 5% at every CV: "
              + ", ".join(f"CV {s['cv']:g} {s['normal_e2e_mean_penalty_pct']:+.1f}%" for s in summary))
        plot_rows = [{"class": cls, "cv": r["cv"], "run": r["run"],
                      **{f: r.get(f"{cls}_{f}") for f in CLASS_FIELDS},
                      **{f + s: r.get(f"{cls}_{f}{s}") for f in CLASS_FIELDS for s in ("_min", "_max")}}
                     for r in rows for cls in ("high", "normal")]
        png = plot_grid(plot_rows, "class", ["high", "normal"], "cv", PANELS, "run",
                        results_dir() / f"{name}.png", x_label="CV")
        print(f"wrote {png}")
    save(name, {"args": vars(args), "rows": rows, "summary": summary,
                "met": {"high_priority": met_high, "normal_penalty": met_normal}, "per_seed_rows": per_seed})
    print(f"wrote {tee.save(name)}")


if __name__ == "__main__":
    main()
