"""The paper's main simulation: 16 instances, 10k requests, M-M and L-L at two rates each (Poisson),
round_robin vs infaas (INFaaS++) vs llumnix side by side, with ratios.

    python benchmarks/paper_sim.py [--requests 10000] [--seeds 3] [--extra "M-M:10,L-L:4"] [--out-png DIR]

Target (issue 2): P99 prefill infaas/llumnix >= 10x at the higher rate of at least one trace (paper: up to
14.8x). Rates are REFERENCE.md's sweep ends (M-M 7.4 / 8.0, L-L 2.6 / 3.2). ``--extra`` adds rates beyond
the paper's - useful because the calibrated latency model saturates at a different rate than the paper's
testbed - and they are reported separately, never mixed into the target check. With ``--seeds N`` every
point runs on N traces (seeds ``--seed`` .. ``--seed``+N-1); the tables show the mean over seeds and the
ratios are ratios of those means (per-seed ratios are in the JSON).
Writes benchmarks/results/paper_sim.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import mean_over_seeds, metrics_row, print_rows, ratio, save, seed_list  # noqa: E402

from llumnix_dask.config import PolicyConfig, SimConfig  # noqa: E402
from llumnix_dask.sim import plot_latency_cdfs, simulate  # noqa: E402
from llumnix_dask.workloads import generate_trace  # noqa: E402

PAPER_RATES = {"M-M": (7.4, 8.0), "L-L": (2.6, 3.2)}
POLICIES = ("round_robin", "infaas", "llumnix")
COLUMNS = [
    ("trace", "trace", 0), ("rate", "rate", 2), ("policy", "policy", 0),
    ("prefill_mean", "prefill mean", 3), ("prefill_p99", "prefill P99", 3), ("prefill_p999", "P99.9", 2),
    ("decode_mean", "decode mean", 4), ("decode_p99", "decode P99", 4),
    ("e2e_mean", "e2e mean", 2), ("e2e_p99", "e2e P99", 2),
    ("preemption_loss", "preempt loss", 3), ("fragmentation_pct", "frag %", 2), ("migrations", "migr", 0),
    ("mem_util_mean", "mem util", 2), ("mem_util_p99", "util P99", 2), ("queued_share", "queued", 3),
    ("wall_s", "wall s", 1),
]
RATIO_KEYS = ("prefill_p99", "prefill_p999", "prefill_mean", "decode_p99", "e2e_p99", "preemption_loss")
RATIO_COLUMNS = [
    ("trace", "trace", 0), ("rate", "rate", 2), ("baseline", "baseline/llumnix", 0),
    ("prefill_p99", "prefill P99 x", 2), ("prefill_p999", "P99.9 x", 2), ("prefill_mean", "prefill mean x", 2),
    ("decode_p99", "decode P99 x", 2), ("e2e_p99", "e2e P99 x", 2), ("preemption_loss", "preempt loss x", 2),
]


def run_point(trace_name: str, rate: float, requests: int, seed: int, png_dir: Path | None) -> list[dict]:
    trace = generate_trace(trace_name, requests, rate, "poisson", seed=seed)
    results, rows = {}, []
    for policy in POLICIES:
        res = simulate(SimConfig(num_instances=16, policy=PolicyConfig(dispatch=policy)), trace)
        results[policy] = res
        rows.append({"trace": trace_name, "rate": rate, "policy": policy, "seed": seed, **metrics_row(res)})
        # Cluster memory utilisation over time, [time, mean, min, max] over instances (every ~1/200 of the run).
        rows[-1]["mem_series"] = res.memory.get("series")
        print(f"  seed {seed} {policy}: prefill P99 {rows[-1]['prefill_p99']:.3f} s, mean memory use "
              f"{rows[-1]['mem_util_mean']:.2f}, wall {res.wall_time_s:.1f} s", flush=True)
    if png_dir is not None:
        png_dir.mkdir(parents=True, exist_ok=True)
        plot_latency_cdfs(results, png_dir / f"paper_sim_{trace_name}_{rate:g}_seed{seed}.png")
    return rows


def ratios_of(rows: list[dict]) -> list[dict]:
    """baseline / llumnix for each baseline row of one point (rows: one per policy, llumnix last)."""
    base = next(r for r in rows if r["policy"] == "llumnix")
    return [{"trace": r["trace"], "rate": r["rate"], "baseline": r["policy"],
             **{k: ratio(r[k], base[k]) for k in RATIO_KEYS}}
            for r in rows if r["policy"] != "llumnix"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (traces) per point; tables show the mean")
    ap.add_argument("--extra", default="", help="extra trace:rate points beyond the paper's, e.g. M-M:10,L-L:4")
    ap.add_argument("--traces", default="M-M,L-L")
    ap.add_argument("--out-png", type=Path, default=None, help="directory for latency CDF plots")
    args = ap.parse_args()
    seeds = seed_list(args.seed, args.seeds)
    points = [(t, r, "paper") for t in args.traces.split(",") for r in PAPER_RATES[t]]
    for item in filter(None, args.extra.split(",")):
        t, r = item.split(":")
        points.append((t, float(r), "extra"))
    all_rows, all_ratios, seed_rows = [], [], []
    for trace_name, rate, kind in points:
        print(f"\n== {trace_name} at {rate:g} req/s ({kind} rate), {args.requests} requests, 16 instances, "
              f"seeds {seeds}", flush=True)
        per_seed = [run_point(trace_name, rate, args.requests, seed, args.out_png) for seed in seeds]
        rows = mean_over_seeds([r for rs in per_seed for r in rs], ("trace", "rate", "policy"))
        ratios = ratios_of(rows)
        for q in ratios:  # per-seed ratios, to show the spread
            for k in RATIO_KEYS:
                q[k + "_seeds"] = [next(x[k] for x in ratios_of(rs) if x["baseline"] == q["baseline"])
                                   for rs in per_seed]
        for r in rows + ratios:
            r["kind"] = kind
        all_rows += rows
        all_ratios += ratios
        seed_rows += [r for rs in per_seed for r in rs]
    print(f"\n== all runs (mean over {len(seeds)} seed(s))")
    print_rows(all_rows, COLUMNS + [("kind", "rates", 0)])
    print("\n== ratios of the seed means (baseline / llumnix; > 1 means llumnix is better)")
    print_rows(all_ratios, RATIO_COLUMNS + [("kind", "rates", 0)])
    best = {}
    for r in all_ratios:
        if r["kind"] == "paper" and r["baseline"] == "infaas" and r["rate"] == max(PAPER_RATES[r["trace"]]):
            best[r["trace"]] = r["prefill_p99"]
    met = any(v is not None and v >= 10 for v in best.values())
    print(f"\ntarget: P99 prefill infaas/llumnix >= 10x at the higher paper rate of a trace: "
          f"{', '.join(f'{t} {v:.2f}x' for t, v in best.items())} -> {'MET' if met else 'MISSED'}")
    save("paper_sim", {"requests": args.requests, "seeds": seeds, "rows": all_rows, "ratios": all_ratios,
                       "per_seed_rows": seed_rows,
                       "target": {"infaas_over_llumnix_p99_prefill_at_high_rate": best, "met": met}})


if __name__ == "__main__":
    main()
