"""How fast is the simulator? Wall time of N requests x 16 instances (target: 10k in < 60 s on 2 cores),
with the paper's setup (``SimConfig.paper``: A10 / LLaMA-7B profile, the real global scheduler fed with
per-step load reports).

    python benchmarks/sim_speed.py [--requests 10000] [--points M-M:7.5,L-L:3.2] [--policies llumnix,infaas]

Prints a table and writes benchmarks/results/sim_speed.json. On a shared machine the numbers are
pessimistic (other processes compete for the CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from llumnix_dask.sim_config import SimConfig
from llumnix_dask.sim import simulate
from llumnix_dask.workloads import generate_trace

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--instances", type=int, default=16)
    ap.add_argument("--points", default="M-M:7.5,L-L:3.2", help="trace:rate pairs")
    ap.add_argument("--policies", default="llumnix,infaas,round_robin")
    args = ap.parse_args()
    rows = []
    for point in args.points.split(","):
        trace_name, rate = point.split(":")
        run_point(args, trace_name, float(rate), rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "sim_speed.json"
    out.write_text(json.dumps({"rows": rows, "load_average": os.getloadavg()}, indent=2))
    print(f"wrote {out}")


def run_point(args, trace_name: str, rate: float, rows: list) -> None:
    trace = generate_trace(trace_name, args.requests, rate, seed=0)
    for policy in args.policies.split(","):
        cfg = SimConfig.paper(trace_name, dispatch=policy, num_instances=args.instances)
        cpu = time.process_time()
        res = simulate(cfg, trace)
        rows.append({
            "policy": policy, "requests": args.requests, "instances": args.instances, "trace": trace_name,
            "rate": rate, "wall_s": res.wall_time_s, "cpu_s": time.process_time() - cpu,
            "sim_time_s": res.sim_time_s, "requests_per_wall_s": args.requests / res.wall_time_s,
            "migrations": res.migrations["committed"] + res.migrations["queued_moves"],
        })
        print(f"{trace_name} {rate:g} {policy:12s} wall {res.wall_time_s:6.1f} s  cpu {rows[-1]['cpu_s']:6.1f} s  "
              f"simulated {res.sim_time_s:7.0f} s  {rows[-1]['requests_per_wall_s']:7.0f} req/s  "
              f"migrations {rows[-1]['migrations']}", flush=True)


if __name__ == "__main__":
    main()
