"""The paper's serving study (Fig. 11) in the simulator: 16 A10 / LLaMA-7B instances, 10k requests per point,
the paper's 7 traces at its rates (7 rates each), INFaaS++ vs Llumnix (and round-robin on the real-trace-like
traces), >= 3 seeds, under the paper's policy parameters (``SimConfig.paper``).

    python benchmarks/paper_sim.py                 # full sweep (~40 min on 2 cores), writes paper_sim.*
    python benchmarks/paper_sim.py --quick         # 2 traces x 2 rates, 1 seed, 3,000 requests (~15 s)
    python benchmarks/paper_sim.py --traces M-M,L-L --seeds 5 --requests 10000
    python benchmarks/paper_sim.py --calibrate     # the fit of the serving-loop overhead (~10 min)

Validation first: INFaaS++ alone against the numbers of the artifact's reproduction of Fig. 11 (decode mean,
preemption loss, P99 prefill at each rate), side by side. Then the comparison: every metric's mean over seeds
with its spread (min-max), the ratios INFaaS++/Llumnix and round-robin/Llumnix of the seed means, and the
checks of issue 12. Writes benchmarks/results/paper_sim.json, paper_sim.png (the paper's layout: a row per
trace, a column per metric, the artifact's curves dashed) and paper_sim.txt (what was printed); ``--quick``
writes paper_sim_quick.* instead.

``--calibrate`` reproduces the fit of the profile's serving-loop overhead (``LatencyModel.step_overhead_ms`` and
``step_overhead_ms_per_seq``): INFaaS++ at the lowest rate of each generated trace, where there is little
queueing and the decode mean is the step time, over a grid of the two constants; it prints each point's relative
error against the artifact's decode mean and the grid point of least RMS error. Everything else (the other 30
rates, P99 prefill, preemption loss) stays out of the fit and is the validation.

The artifact's numbers are read off its reproduction plot (``artifact/63_serving_performance/plot/
figure11.png`` on branch osdi24ae of the authors' repository) by eye: +-5% of each panel's range. That plot has
no ShareGPT row; ShareGPT's reference is the paper's own Fig. 11 (``figure11_paper.pdf`` next to it), read the
same way, at the paper's 5 rates. ShareGPT is swept past the paper's rates too (``BEYOND_PAPER``), to where the
simulated testbed has its knee; the checks report the paper's rates and the longer sweep separately.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from _common import print_rows, ratio, save, seed_list  # noqa: E402
from _sim_sweep import LATENCY_PANELS, Tee, plot_grid, results_dir, run_all, spread  # noqa: E402

from llumnix_dask.sim_config import SimConfig  # noqa: E402
from llumnix_dask.sim import simulate  # noqa: E402
from llumnix_dask.workloads import generate_trace  # noqa: E402

# The paper's rates (its Fig. 11), 7 per trace (ShareGPT: the paper's 5, then 3 past them, see BEYOND_PAPER).
TRACE_RATES = {
    "ShareGPT": [7.0, 7.25, 7.5, 7.75, 8.0, 8.5, 9.0, 9.5],
    "BurstGPT": [round(x, 3) for x in np.linspace(7.5, 8.5, 7)],
    "S-S": [32.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0],
    "M-M": [7.4, 7.5, 7.6, 7.7, 7.8, 7.9, 8.0],
    "L-L": [2.6, 2.7, 2.8, 2.9, 3.0, 3.1, 3.2],
    "S-L": [4.1, 4.15, 4.2, 4.25, 4.3, 4.35, 4.4],
    "L-S": [10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 22.0],
}
REAL_TRACES = ("ShareGPT", "BurstGPT")
# Rates swept past the paper's: the simulated A10 serves the ShareGPT-like trace ~14% better than the paper's
# testbed did (INFaaS++ here at 9.0 req/s looks like the paper's at 7.75-8.0: P99 prefill ~20 s, preemption
# loss ~1 s, decode mean ~0.065 s), so the paper's range ends before the knee. Checks report both.
BEYOND_PAPER = {"ShareGPT": (8.5, 9.0, 9.5)}
QUICK = {"M-M": [7.6, 8.0], "L-L": [2.8, 3.2]}
# Read off the artifact's figure11.png (INFaaS++ and Llumnix, generated traces; approximate).
ARTIFACT = {
    "S-S": {"prefill_p99": ([62, 77, 78, 87, 103, 265, 100], [20, 17, 38, 40, 43, 60, 45]),
            "decode_mean": ([0.060, 0.061, 0.062, 0.064, 0.065, 0.066, 0.065], None),
            "preemption_loss": ([0.20, 0.28, 0.25, 0.28, 0.49, 0.53, 0.38], [0.11, 0.21, 0.15, 0.19, 0.16, 0.25, 0.26])},
    "M-M": {"prefill_p99": ([4, 3, 4, 8, 15, 12, 137], [3, 3, 3, 3, 5, 27, 47]),
            "decode_mean": ([0.051, 0.052, 0.053, 0.053, 0.054, 0.055, 0.062], None),
            "preemption_loss": ([0.57, 0.59, 0.74, 0.70, 0.80, 1.03, 1.28], [0.0, 0.01, 0.06, 0.07, 0.10, 0.18, 0.46])},
    "L-L": {"prefill_p99": ([2, 3, 6, 13, 48, 103, 193], [1, 1, 2, 2, 3, 8, 28]),
            "decode_mean": ([0.048, 0.049, 0.050, 0.051, 0.055, 0.057, 0.061], None),
            "preemption_loss": ([0.5, 0.8, 1.1, 1.35, 1.85, 2.45, 3.8], [0.0, 0.0, 0.05, 0.2, 0.05, 0.3, 1.1])},
    "S-L": {"prefill_p99": ([1, 1, 2, 50, 50, 70, 147], [1, 2, 11, 17, 16, 42, 49]),
            "decode_mean": ([0.054, 0.057, 0.058, 0.063, 0.067, 0.070, 0.076], None),
            "preemption_loss": ([3.0, 3.9, 4.2, 5.5, 6.2, 6.6, 7.7], [0.6, 0.7, 1.3, 1.9, 2.1, 3.1, 3.8])},
    # From the paper's own Fig. 11 (figure11_paper.pdf in the artifact: the reproduction has no ShareGPT row), at
    # its 5 rates; None past them.
    "ShareGPT": {"prefill_p99": ([1.5, 4.5, 14, 20, 28, None, None, None], [1.5, 1.5, 2.5, 5, 9, None, None, None]),
                 "decode_mean": ([0.054, 0.056, 0.057, 0.060, 0.063, None, None, None], None),
                 "preemption_loss": ([0.09, 0.18, 0.22, 0.48, 1.05, None, None, None],
                                     [0.0, 0.0, 0.01, 0.11, 0.44, None, None, None])},
    "L-S": {"prefill_p99": ([4, 8, 12, 22, 80, 170, 270], [5, 5, 7, 8, 65, 115, 190]),
            "decode_mean": ([0.047, 0.048, 0.053, 0.057, 0.065, 0.065, 0.066], None),
            "preemption_loss": ([0.0, 0.025, 0.045, 0.115, 0.18, 0.165, 0.165], [0.0, 0.0, 0.0, 0.005, 0.10, 0.19, 0.14])},
}
FIELDS = ("prefill_mean", "prefill_p99", "decode_mean", "decode_p99", "e2e_mean", "e2e_p99", "preemption_loss",
          "fragmentation_pct", "migrations", "mem_util_mean", "wall_s")


def policies_for(trace: str) -> tuple[str, ...]:
    return ("round_robin", "infaas", "llumnix") if trace in REAL_TRACES else ("infaas", "llumnix")


def jobs_for(points: dict[str, list[float]], seeds: list[int], requests: int) -> list:
    jobs = []
    for trace_name, rates in points.items():
        for rate in rates:
            for seed in seeds:
                for policy in policies_for(trace_name):
                    cfg = SimConfig.paper(trace_name, dispatch=policy)
                    # The same trace (seeded) for every policy; built when its run starts.
                    jobs.append(({"trace": trace_name, "rate": rate, "policy": policy, "seed": seed},
                                 lambda cfg=cfg, t=trace_name, r=rate, s=seed: simulate(
                                     cfg, generate_trace(t, requests, r, "poisson", seed=s,
                                                         max_request_tokens=cfg.max_request_tokens))))
    return jobs


def artifact_value(trace: str, rate: float, metric: str, which: int = 0):
    ref = ARTIFACT.get(trace, {}).get(metric)
    if ref is None or ref[which] is None or rate not in TRACE_RATES[trace]:
        return None
    return ref[which][TRACE_RATES[trace].index(rate)]


def validation(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        if r["policy"] != "infaas" or r["trace"] not in ARTIFACT:
            continue
        out.append({"trace": r["trace"], "rate": r["rate"],
                    "decode_mean": r["decode_mean"], "art_decode_mean": artifact_value(r["trace"], r["rate"], "decode_mean"),
                    "preemption_loss": r["preemption_loss"],
                    "art_preemption_loss": artifact_value(r["trace"], r["rate"], "preemption_loss"),
                    "prefill_p99": r["prefill_p99"], "prefill_p99_min": r["prefill_p99_min"],
                    "prefill_p99_max": r["prefill_p99_max"],
                    "art_prefill_p99": artifact_value(r["trace"], r["rate"], "prefill_p99")})
    return out


def ratios(rows: list[dict]) -> list[dict]:
    by = {(r["trace"], r["rate"], r["policy"]): r for r in rows}
    out = []
    for (trace, rate, policy), r in by.items():
        if policy == "llumnix":
            continue
        ll = by[(trace, rate, "llumnix")]
        q = {"trace": trace, "rate": rate, "baseline": policy}
        for k in ("prefill_p99", "prefill_mean", "decode_p99", "e2e_p99", "e2e_mean"):
            q[k] = ratio(r[k], ll[k])
        q["preemption_loss_cut_pct"] = (100 * (1 - ll["preemption_loss"] / r["preemption_loss"])
                                        if r["preemption_loss"] else None)
        q["fragmentation_pct"], q["fragmentation_pct_llumnix"] = r["fragmentation_pct"], ll["fragmentation_pct"]
        # Worse beyond seed noise: Llumnix's P99 prefill above the baseline's and the two seed ranges disjoint.
        # (Needs >= 2 seeds: one seed has no spread to call noise; None then.)
        q["llumnix_worse_beyond_noise"] = (bool(ll["prefill_p99_min"] > r["prefill_p99_max"])
                                           if min(ll["seeds"], r["seeds"]) >= 2 else None)
        out.append(q)
    return out


def checks(qs: list[dict]) -> dict:
    gen = [q for q in qs if q["trace"] not in REAL_TRACES and q["baseline"] == "infaas"]
    real_inf_all = [q for q in qs if q["trace"] in REAL_TRACES and q["baseline"] == "infaas"]
    real_inf = [q for q in real_inf_all if q["rate"] not in BEYOND_PAPER.get(q["trace"], ())]
    real_rr = [q for q in qs if q["trace"] in REAL_TRACES and q["baseline"] == "round_robin"
               and q["rate"] not in BEYOND_PAPER.get(q["trace"], ())]
    best = lambda items, k: max((q[k] for q in items if q[k] is not None), default=None)  # noqa: E731
    cuts = [q["preemption_loss_cut_pct"] for q in gen if q["preemption_loss_cut_pct"] is not None]
    out = {
        "generated_best_p99_prefill_x": best(gen, "prefill_p99"),
        "generated_best_mean_prefill_x": best(gen, "prefill_mean"),
        "generated_mean_preemption_loss_cut_pct": sum(cuts) / len(cuts) if cuts else None,
        "generated_fragmentation_pct": [sum(q["fragmentation_pct"] for q in gen) / len(gen) if gen else None,
                                        sum(q["fragmentation_pct_llumnix"] for q in gen) / len(gen) if gen else None],
        "llumnix_worse_beyond_noise_at": [(q["trace"], q["rate"]) for q in qs if q["llumnix_worse_beyond_noise"]],
        "real_best_p99_prefill_vs_infaas_x": best(real_inf, "prefill_p99"),
        "real_best_p99_prefill_vs_infaas_x_beyond": best(real_inf_all, "prefill_p99"),
        "real_best_p99_prefill_vs_round_robin_x": best(real_rr, "prefill_p99"),
    }
    targets = [
        ("generated: best P99 prefill INFaaS++/Llumnix >= 10x", out["generated_best_p99_prefill_x"], 10),
        ("generated: best mean prefill INFaaS++/Llumnix >= 4x", out["generated_best_mean_prefill_x"], 4),
        ("generated: preemption loss >= 60% lower (mean over points)", out["generated_mean_preemption_loss_cut_pct"], 60),
        ("real-like: best P99 prefill INFaaS++/Llumnix >= 3x, at the paper's rates",
         out["real_best_p99_prefill_vs_infaas_x"], 3),
        ("real-like: best P99 prefill INFaaS++/Llumnix >= 3x, sweep continued past the paper's rates "
         + ", ".join(f"({t} to {max(r):g} req/s)" for t, r in BEYOND_PAPER.items()),
         out["real_best_p99_prefill_vs_infaas_x_beyond"], 3),
        ("real-like: best P99 prefill round-robin/Llumnix >= 20x, at the paper's rates",
         out["real_best_p99_prefill_vs_round_robin_x"], 20),
    ]
    out["targets"] = [{"target": t, "value": v, "met": v is not None and v >= goal} for t, v, goal in targets]
    frag = out["generated_fragmentation_pct"]
    out["targets"].append({"target": "generated: fragmentation lower under Llumnix", "value": frag,
                           "met": gen != [] and frag[1] < frag[0]})
    judged = [q for q in qs if q["llumnix_worse_beyond_noise"] is not None]
    out["targets"].append({"target": "Llumnix never worse than INFaaS++ beyond seed noise",
                           "value": out["llumnix_worse_beyond_noise_at"] if judged else "not judged: 1 seed",
                           "met": bool(judged) and not out["llumnix_worse_beyond_noise_at"]})
    return out


def references_for_plot() -> dict:
    refs = {}
    for trace, metrics in ARTIFACT.items():
        inf = {"x": TRACE_RATES[trace]}
        ll = {"x": TRACE_RATES[trace]}
        for m, (a, b) in metrics.items():
            inf[m] = [np.nan if v is None else v for v in a]
            if b is not None:
                ll[m] = [np.nan if v is None else v for v in b]
        refs[trace] = {"artifact INFaaS++": inf, "artifact Llumnix": ll}
    return refs


CALIBRATION_GRID = ([2.0, 3.0, 4.0, 5.0], [0.3, 0.4, 0.5, 0.6])


def calibrate(requests: int, seeds: list[int], progress: bool) -> dict:
    """Grid fit of the serving-loop overhead to the artifact's INFaaS++ decode mean at the lowest rates."""
    base = SimConfig.paper().latency
    points = {t: TRACE_RATES[t][0] for t in ARTIFACT}
    jobs = []
    for c0 in CALIBRATION_GRID[0]:
        for c1 in CALIBRATION_GRID[1]:
            lat = replace(base, step_overhead_ms=c0, step_overhead_ms_per_seq=c1)
            for t, rate in points.items():
                for seed in seeds:
                    cfg = replace(SimConfig.paper(t, dispatch="infaas"), latency=lat)
                    jobs.append(({"c0": c0, "c1": c1, "trace": t, "rate": rate, "seed": seed},
                                 lambda cfg=cfg, t=t, r=rate, s=seed: simulate(cfg, generate_trace(
                                     t, requests, r, seed=s, max_request_tokens=cfg.max_request_tokens))))
    rows = spread(run_all(jobs, progress=progress), ("c0", "c1", "trace", "rate"), ("decode_mean",))
    fits = []
    for c0 in CALIBRATION_GRID[0]:
        for c1 in CALIBRATION_GRID[1]:
            errs = {r["trace"]: 100 * (r["decode_mean"] / artifact_value(r["trace"], r["rate"], "decode_mean") - 1)
                    for r in rows if r["c0"] == c0 and r["c1"] == c1}
            fits.append({"c0": c0, "c1": c1, **{f"err_{t}": e for t, e in errs.items()},
                         "rms_pct": (sum(e * e for e in errs.values()) / len(errs)) ** 0.5})
    print_rows(fits, [("c0", "step ms", 1), ("c1", "ms/seq", 2)]
               + [(f"err_{t}", f"{t} {points[t]:g} %", 1) for t in points] + [("rms_pct", "RMS %", 1)])
    best = min(fits, key=lambda f: f["rms_pct"])
    print(f"least RMS error: step_overhead_ms={best['c0']}, step_overhead_ms_per_seq={best['c1']} "
          f"({best['rms_pct']:.1f}%)")
    return {"requests": requests, "seeds": seeds, "grid": CALIBRATION_GRID, "fits": fits, "best": best, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="first seed")
    ap.add_argument("--seeds", type=int, default=3, help="traces per point (seeds seed .. seed+N-1)")
    ap.add_argument("--traces", default=",".join(TRACE_RATES), help="comma-separated subset of " + ",".join(TRACE_RATES))
    ap.add_argument("--quick", action="store_true", help="M-M and L-L at 2 rates, 1 seed, 3,000 requests")
    ap.add_argument("--calibrate", action="store_true",
                    help="fit the serving-loop overhead to the artifact's decode means at the lowest rates")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    if args.calibrate:
        with Tee() as tee:
            print(f"== calibration: INFaaS++ at the lowest rate of each generated trace, "
                  f"{args.requests} requests x seeds {seed_list(args.seed, args.seeds)}")
            out = calibrate(args.requests, seed_list(args.seed, args.seeds), not args.no_progress)
        save("paper_sim_calibration", out)
        print(f"wrote {tee.save('paper_sim_calibration')}")
        return
    if args.quick:
        points, seeds, requests, name = QUICK, [args.seed], 3_000, "paper_sim_quick"
    else:
        points = {t: TRACE_RATES[t] for t in args.traces.split(",")}
        seeds, requests, name = seed_list(args.seed, args.seeds), args.requests, "paper_sim"
    with Tee() as tee:
        print(f"== {sum(len(r) for r in points.values())} points x {len(seeds)} seed(s), {requests} requests, "
              f"16 instances of a10-llama-7b (785 blocks, 12,800 batched tokens), paper policy parameters")
        per_seed = run_all(jobs_for(points, seeds, requests), progress=not args.no_progress)
        rows = spread(per_seed, ("trace", "rate", "policy"), FIELDS)
        print("\n== validation: INFaaS++ against the artifact's reproduction of Fig. 11 (ShareGPT: the paper's "
              "Fig. 11; ours = mean over seeds)")
        val = validation(rows)
        print_rows(val, [("trace", "trace", 0), ("rate", "rate", 2), ("decode_mean", "decode mean", 4),
                         ("art_decode_mean", "artifact", 3), ("preemption_loss", "preempt loss", 2),
                         ("art_preemption_loss", "artifact", 2), ("prefill_p99", "prefill P99", 1),
                         ("prefill_p99_min", "min", 1), ("prefill_p99_max", "max", 1),
                         ("art_prefill_p99", "artifact", 0)])
        print(f"\n== every point: mean over {len(seeds)} seed(s) [min-max]")
        for r in rows:
            r["prefill_p99_range"] = f"{r['prefill_p99_min']:.2f}-{r['prefill_p99_max']:.2f}"
        print_rows(rows, [("trace", "trace", 0), ("rate", "rate", 2), ("policy", "policy", 0),
                          ("prefill_mean", "prefill mean", 3), ("prefill_p99", "prefill P99", 2),
                          ("prefill_p99_range", "P99 range", 0), ("decode_mean", "decode mean", 4),
                          ("decode_p99", "decode P99", 4), ("e2e_mean", "e2e mean", 2), ("e2e_p99", "e2e P99", 1),
                          ("preemption_loss", "preempt loss", 3), ("fragmentation_pct", "frag %", 2),
                          ("migrations", "migr", 0), ("mem_util_mean", "mem util", 2), ("wall_s", "wall s", 1)])
        qs = ratios(rows)
        print("\n== ratios of the seed means (baseline / Llumnix; > 1: Llumnix better)")
        print_rows(qs, [("trace", "trace", 0), ("rate", "rate", 2), ("baseline", "baseline", 0),
                        ("prefill_p99", "prefill P99 x", 2), ("prefill_mean", "prefill mean x", 2),
                        ("decode_p99", "decode P99 x", 2), ("e2e_p99", "e2e P99 x", 2),
                        ("preemption_loss_cut_pct", "preempt loss cut %", 1),
                        ("llumnix_worse_beyond_noise", "worse beyond noise", 0)])
        summary = checks(qs)
        print("\n== issue 12 checks")
        for t in summary["targets"]:
            v = t["value"]
            shown = f"{v:.2f}" if isinstance(v, float) else str(v)
            unjudged = v is None or (isinstance(v, str) and v.startswith("not judged"))
            verdict = "MET   " if t["met"] else ("n/a   " if unjudged else "MISSED")
            print(f"  {verdict} {t['target']}: {shown if v is not None else 'no such point in this run'}")
        png = plot_grid(rows, "trace", list(points), "rate", LATENCY_PANELS, "policy",
                        results_dir() / f"{name}.png", references=references_for_plot())
        print(f"wrote {png}")
    save(name, {"requests": requests, "seeds": seeds, "points": points, "rows": rows, "ratios": qs,
                "validation": val, "checks": summary, "per_seed_rows": per_seed})
    print(f"wrote {tee.save(name)}")


if __name__ == "__main__":
    main()
