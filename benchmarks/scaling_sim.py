"""Auto-scaling: L-L, Gamma rate 2 CV 4, 1-16 instances starting with 8. Llumnix vs INFaaS++ with the same
scaling policy, over the paper's thresholds x in {5, 25, 45, 65, 85}, y = x + 50.

    python benchmarks/scaling_sim.py [--requests 10000] [--seeds 3] [--thresholds 5,25,45,65,85]

Each run gives (average instances, P99 prefill). Target (issue 2): at similar P99 prefill Llumnix uses
>= 15% fewer instances than INFaaS++ (paper: 16-18% lower cost, up to 36%). "Similar" is read off the cost /
latency curves: for each Llumnix point, INFaaS++'s instance count at the same P99 prefill is interpolated on
its curve (P99 on a log scale) when the Llumnix P99 lies inside INFaaS++'s range. Same-threshold pairs are
shown too. With ``--seeds N`` every run goes over N traces and each curve point is the mean over seeds (both
coordinates); the per-seed values are in the JSON. Writes benchmarks/results/scaling_sim.json.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import mean_over_seeds, metrics_row, print_rows, save, seed_list  # noqa: E402

from llumnix_dask.config import PolicyConfig, SimConfig  # noqa: E402
from llumnix_dask.sim import simulate  # noqa: E402
from llumnix_dask.workloads import generate_trace  # noqa: E402

COLUMNS = [
    ("policy", "policy", 0), ("x", "x", 0), ("y", "y", 0), ("avg_instances", "avg inst", 2),
    ("prefill_mean", "prefill mean", 3), ("prefill_p99", "prefill P99", 3), ("decode_p99", "decode P99", 4),
    ("e2e_p99", "e2e P99", 2), ("preemption_loss", "preempt loss", 3), ("migrations", "migr", 0),
    ("scale_ups", "ups", 0), ("scale_downs", "downs", 0), ("wall_s", "wall s", 1),
]


def interpolate_instances(curve: list[tuple[float, float]], p99: float) -> float | None:
    """Instances on a (p99, instances) curve at ``p99`` (log-linear), None outside its range."""
    pts = sorted(curve)
    for (p0, n0), (p1, n1) in zip(pts, pts[1:]):
        if p0 <= p99 <= p1:
            if p1 == p0:
                return min(n0, n1)
            w = (math.log(p99) - math.log(p0)) / (math.log(p1) - math.log(p0))
            return n0 + w * (n1 - n0)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=2.0)
    ap.add_argument("--cv", type=float, default=4.0)
    ap.add_argument("--thresholds", default="5,25,45,65,85")
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (traces); curve points are means")
    ap.add_argument("--patience", type=float, default=None,
                    help="sensitivity study only: override PolicyConfig.scaling_patience_s (default 30 s)")
    ap.add_argument("--startup", type=float, default=None,
                    help="sensitivity study only: override SimConfig.instance_startup_s (default 10 s)")
    args = ap.parse_args()
    base_policy = PolicyConfig() if args.patience is None else PolicyConfig(scaling_patience_s=args.patience)
    sim_extra = {} if args.startup is None else {"instance_startup_s": args.startup}
    seed_rows = []
    for seed in seed_list(args.seed, args.seeds):
        trace = generate_trace("L-L", args.requests, args.rate, "gamma", args.cv, seed=seed)
        for x in (float(v) for v in args.thresholds.split(",")):
            for policy in ("infaas", "llumnix"):
                pol = replace(base_policy, dispatch=policy, scaling_enabled=True, scale_up_freeness=x,
                              scale_down_freeness=x + 50, min_instances=1, max_instances=16)
                res = simulate(SimConfig(num_instances=8, policy=pol, **sim_extra), trace)
                actions = [e["action"] for e in res.scaling_events]
                seed_rows.append({"policy": policy, "x": x, "y": x + 50, "seed": seed, **metrics_row(res),
                                  "scale_ups": actions.count("up"), "scale_downs": actions.count("down")})
                r = seed_rows[-1]
                print(f"seed {seed} {policy} x={x:g}: {r['avg_instances']:.2f} instances, P99 prefill "
                      f"{r['prefill_p99']:.3f} s, wall {res.wall_time_s:.1f} s", flush=True)
    rows = mean_over_seeds(seed_rows, ("policy", "x"))
    print(f"\n== mean over {args.seeds} seed(s)")
    print_rows(rows, COLUMNS)
    print("\n== cost / latency curves (average instances vs P99 prefill, by P99)")
    for policy in ("infaas", "llumnix"):
        pts = sorted((r["prefill_p99"], r["avg_instances"], r["x"]) for r in rows if r["policy"] == policy)
        print(f"  {policy:8s} " + "  ".join(f"x={x:g}: {n:.2f} inst @ {p:.2f} s" for p, n, x in pts))
    infaas_curve = [(r["prefill_p99"], r["avg_instances"]) for r in rows if r["policy"] == "infaas"]
    comparisons = []
    for r in rows:
        if r["policy"] != "llumnix":
            continue
        same = next(q for q in rows if q["policy"] == "infaas" and q["x"] == r["x"])
        at_p99 = interpolate_instances(infaas_curve, r["prefill_p99"])
        comparisons.append({
            "x": r["x"], "llumnix_instances": r["avg_instances"], "llumnix_p99": r["prefill_p99"],
            "infaas_instances_same_x": same["avg_instances"], "infaas_p99_same_x": same["prefill_p99"],
            "saving_same_x_pct": 100 * (1 - r["avg_instances"] / same["avg_instances"]),
            "infaas_instances_at_same_p99": at_p99,
            "saving_at_same_p99_pct": None if at_p99 is None else 100 * (1 - r["avg_instances"] / at_p99),
        })
    print("\n== Llumnix vs INFaaS++ (saving = fewer average instances)")
    print_rows(comparisons, [("x", "x", 0), ("llumnix_instances", "llumnix inst", 2), ("llumnix_p99", "llumnix P99", 3),
                             ("infaas_instances_same_x", "infaas inst (same x)", 2),
                             ("infaas_p99_same_x", "infaas P99 (same x)", 3),
                             ("saving_same_x_pct", "saving same x %", 1),
                             ("infaas_instances_at_same_p99", "infaas inst @ same P99", 2),
                             ("saving_at_same_p99_pct", "saving @ same P99 %", 1)])
    at_p99 = [c["saving_at_same_p99_pct"] for c in comparisons if c["saving_at_same_p99_pct"] is not None]
    best = max(at_p99) if at_p99 else None
    met = best is not None and best >= 15
    print(f"\nbest saving at similar P99 prefill: {'-' if best is None else f'{best:.1f}%'} (target >= 15%) -> "
          f"{'MET' if met else 'MISSED'}")
    name = "scaling_sim" if args.patience is None and args.startup is None else (
        f"scaling_sim_patience{base_policy.scaling_patience_s:g}_startup{SimConfig(**sim_extra).instance_startup_s:g}")
    save(name, {"args": vars(args), "rows": rows, "comparisons": comparisons, "best_saving_pct": best,
                         "met": met, "per_seed_rows": seed_rows})


if __name__ == "__main__":
    main()
