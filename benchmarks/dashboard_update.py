"""How long one refresh of the Llumnix dashboard page holds the scheduler's event loop.

The page's periodic callback runs on the Dask scheduler's event loop: it takes the global scheduler's
snapshot and refreshes the Bokeh sources. This times both parts (median and max over many refreshes) for
growing clusters with full logs (50 migrations shown, 2000 finished requests in the latency window), so the
refresh interval (``UPDATE_INTERVAL_MS``) can be judged against what it costs.

    python benchmarks/dashboard_update.py [--repeats 200]

Writes benchmarks/results/dashboard_update.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import print_rows, save  # noqa: E402

from llumnix_dask.config import PolicyConfig  # noqa: E402
from llumnix_dask.policy.load import InstanceLoad  # noqa: E402
from llumnix_dask.scheduler.core import GlobalScheduler  # noqa: E402
from llumnix_dask.scheduler.stats import FinishedRequest  # noqa: E402
from llumnix_dask.widgets.dashboard import UPDATE_INTERVAL_MS, LlumnixDashboard  # noqa: E402
from llumnix_dask.widgets.dashboard_data import LatencyHistory  # noqa: E402


def busy_scheduler(n_instances: int) -> GlobalScheduler:
    gs = GlobalScheduler(PolicyConfig(ttft_slo_s=1.0))
    for i in range(n_instances):
        gs.register(f"instance-{i}", f"tcp://h:{i}", InstanceLoad(
            f"instance-{i}", total_blocks=2000, used_blocks=37 * i % 2000, num_running=i % 17, num_waiting=i % 5,
            running_blocks=37 * i % 2000, waiting_demand_blocks=40 * (i % 5), num_high_priority=i % 3))
    for k in range(1000):
        gs.migration_finished(f"instance-{k % n_instances}", f"instance-{(k + 1) % n_instances}", f"r{k}", k % 7 != 0,
                              "low freeness", {"downtime_s": 0.02, "total_s": 0.3, "stages": [{"blocks": 40}] * 3})
    for k in range(2000):
        gs.request_finished(FinishedRequest(f"r{k}", k % 2, time.time(), 0.05 + k % 13 / 100, 0.02, 2.0, 100))
    return gs


def measure(n_instances: int, repeats: int) -> dict:
    gs = busy_scheduler(n_instances)
    history = LatencyHistory()
    snap_s, update_s = [], []

    def snapshot() -> dict:
        t = time.perf_counter()
        snap = gs.snapshot(n_migrations=50, n_decisions=6)
        history.sample(snap, min_interval_s=0.0)
        snap["_latency_history"] = history
        snap_s.append(time.perf_counter() - t)
        return snap

    page = LlumnixDashboard(snapshot)
    for k in range(repeats):
        # A new load report per refresh, so the page has something to send.
        rec = gs.instances[f"instance-{k % n_instances}"]
        gs.update_load(InstanceLoad(rec.instance_id, total_blocks=2000, used_blocks=k % 2000, num_running=k % 9))
        t = time.perf_counter()
        page.update()
        update_s.append(time.perf_counter() - t)
    return {
        "instances": n_instances,
        "snapshot_ms_median": 1000 * statistics.median(snap_s),
        "refresh_ms_median": 1000 * statistics.median(update_s),
        "refresh_ms_max": 1000 * max(update_s),
        "loop_share_pct": 100 * statistics.median(update_s) / (UPDATE_INTERVAL_MS / 1000),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    rows = [measure(n, args.repeats) for n in (2, 16, 64)]
    print(f"refresh every {UPDATE_INTERVAL_MS} ms; one refresh = snapshot + Bokeh source updates (no browser)")
    print_rows(rows, [("instances", "instances", 0), ("snapshot_ms_median", "snapshot ms (median)", 2),
                      ("refresh_ms_median", "refresh ms (median)", 2), ("refresh_ms_max", "refresh ms (max)", 2),
                      ("loop_share_pct", "% of the loop", 2)])
    save("dashboard_update", {"update_interval_ms": UPDATE_INTERVAL_MS, "repeats": args.repeats, "rows": rows})


if __name__ == "__main__":
    main()
