"""How fast does the global scheduler dispatch, and how much latency does a dispatch add?

A real ``dask scheduler --preload llumnix_dask.preload.scheduler`` process holds 64 registered (simulated)
instances whose loads are re-reported every 10 ms (6,400 load reports/s, as 64 busy llumlets would send).
A client process then dispatches through the frontend's :class:`DispatchClient` (``llumnix_dispatch_batch``
over Dask comms; concurrent dispatches share a round trip, a lone one travels alone):

* closed loop: 64 concurrent callers as fast as they can -> dispatch decisions per second;
* open loop: Poisson arrivals at 1,000 and 2,000 dispatches/s -> added latency (client round trip) p50/p99,
  and the scheduler-side decision time.

Targets: >= 2,000 dispatches/s and p99 added latency <= 5 ms. The machine is shared, so numbers vary.

    python benchmarks/dispatch_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import print_rows, save  # noqa: E402

from llumnix_dask.policy.load import InstanceLoad  # noqa: E402
from llumnix_dask.scheduler.stats import percentile  # noqa: E402
from llumnix_dask.client.dispatch import DispatchClient  # noqa: E402
from llumnix_dask.wire import call  # noqa: E402
from llumnix_dask.wire import scheduler_api as api  # noqa: E402

N_INSTANCES = 64
REPORT_INTERVAL_S = 0.01


def start_scheduler(workdir: str) -> tuple[subprocess.Popen, str]:
    sched_file = os.path.join(workdir, "scheduler.json")
    proc = subprocess.Popen(
        ["dask", "scheduler", "--preload", "llumnix_dask.preload.scheduler", "--host", "127.0.0.1", "--port", "0",
         "--no-dashboard", "--scheduler-file", sched_file],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(sched_file):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError("the Dask scheduler did not start")
        time.sleep(0.1)
    import json

    time.sleep(0.2)
    return proc, json.loads(Path(sched_file).read_text())["address"]


def simulated_load(i: int, rng: random.Random) -> InstanceLoad:
    """A busy instance inside the migration band (neither source nor destination), so only dispatch runs."""
    running = rng.randint(8, 12)
    used = rng.randint(300, 500)
    return InstanceLoad(f"sim-{i}", total_blocks=1000, used_blocks=used, num_running=running,
                        running_blocks=used, time=time.time())


def reporter_process(address: str, stop, sent) -> None:
    """Stands in for 64 llumlets: a separate process, like the workers, re-reporting every load each 10 ms."""

    async def loop() -> None:
        from distributed.core import ConnectionPool

        rng = random.Random(1)
        pool = await ConnectionPool(limit=4)
        while not stop.is_set():
            loads = [simulated_load(i, rng) for i in range(N_INSTANCES)]
            await call(pool(address), api.ReportLoads(loads=loads))
            sent.value += len(loads)
            await asyncio.sleep(REPORT_INTERVAL_S)
        await pool.close()

    asyncio.run(loop())


async def closed_loop(client, total: int, callers: int) -> dict:
    rtts: list[float] = []
    decisions: list[float] = []
    counter = iter(range(total))

    async def caller() -> None:
        for i in counter:
            t0 = time.perf_counter()
            r = await client.place(request_id=f"c{i}", num_prompt_tokens=128, priority=0)
            rtts.append(time.perf_counter() - t0)
            decisions.append(r.decision_s)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    wall = time.perf_counter() - start
    return {"dispatches": total, "per_s": total / wall, "rtt_p50_ms": 1e3 * percentile(rtts, 50),
            "rtt_p99_ms": 1e3 * percentile(rtts, 99), "decision_p99_ms": 1e3 * percentile(decisions, 99)}


async def open_loop(client, rate: float, duration_s: float, rng: random.Random) -> dict:
    rtts: list[float] = []
    decisions: list[float] = []
    tasks = []

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        r = await client.place(request_id=f"o{i}", num_prompt_tokens=128, priority=0)
        rtts.append(time.perf_counter() - t0)
        decisions.append(r.decision_s)

    start = time.perf_counter()
    t, i = 0.0, 0
    while t < duration_s:
        t += rng.expovariate(rate)
        delay = t - (time.perf_counter() - start)
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
        i += 1
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    return {"dispatches": i, "per_s": i / wall, "rtt_p50_ms": 1e3 * percentile(rtts, 50),
            "rtt_p99_ms": 1e3 * percentile(rtts, 99), "decision_p99_ms": 1e3 * percentile(decisions, 99)}


async def run(quick: bool) -> list[dict]:
    from distributed.core import ConnectionPool

    rng = random.Random(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        proc, address = start_scheduler(tmp)
        try:
            pool = await ConnectionPool(limit=256)
            for i in range(N_INSTANCES):
                await call(pool(address), api.RegisterInstance(
                    instance_id=f"sim-{i}", address=f"tcp://127.0.0.1:{20000 + i}", name=f"sim-{i}",
                    load=simulated_load(i, rng), info=api.InstanceInfo(block_size=16, backend="sim")))
            import multiprocessing as mp

            ctx = mp.get_context("spawn")
            stop, sent = ctx.Event(), ctx.Value("l", 0)
            rep = ctx.Process(target=reporter_process, args=(address, stop, sent), daemon=True)
            rep.start()
            for policy in ("llumnix", "round_robin"):
                reply = await call(pool(address), api.SetPolicy(updates={"dispatch": policy}), api.PolicyReply)
                assert reply.status == "OK", reply
                client = DispatchClient(lambda: pool(address))
                closed = await closed_loop(client, 3000 if quick else 20000, callers=64)
                rows.append({"policy": policy, "mode": "closed loop, 64 callers", **closed})
                for rate in (1000.0, 2000.0):
                    client = DispatchClient(lambda: pool(address))
                    res = await open_loop(client, rate, 2.0 if quick else 5.0, rng)
                    res["batch_mean"] = client.num_dispatches / max(1, client.num_round_trips)
                    rows.append({"policy": policy, "mode": f"open loop {rate:.0f}/s", **res})
            stop.set()
            rep.join(10)
            reports = sent.value
            snap = await call(pool(address), api.GetSnapshot())
            await pool.close()
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"{N_INSTANCES} simulated instances, {reports} load reports during the run, "
          f"{snap['counters']['dispatched']} dispatches")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer dispatches (a smoke run)")
    args = parser.parse_args()
    rows = asyncio.run(run(args.quick))
    print_rows(rows, [("policy", "policy", 0), ("mode", "mode", 0), ("dispatches", "n", 0),
                      ("per_s", "dispatch/s", 0), ("rtt_p50_ms", "RTT p50 ms", 3), ("rtt_p99_ms", "RTT p99 ms", 3),
                      ("decision_p99_ms", "decide p99 ms", 3), ("batch_mean", "batch", 1)])
    best = max(r["per_s"] for r in rows if r["mode"].startswith("closed") and r["policy"] == "llumnix")
    p99 = max(r["rtt_p99_ms"] for r in rows if r["mode"] == "open loop 2000/s" and r["policy"] == "llumnix")
    print(f"llumnix: {best:.0f} dispatches/s (target >= 2000); p99 added latency at 2000/s {p99:.2f} ms (target <= 5)")
    save("dispatch_overhead", {"instances": N_INSTANCES, "report_interval_s": REPORT_INTERVAL_S, "rows": rows,
                               "llumnix_dispatch_per_s": best, "llumnix_p99_ms_at_2000_per_s": p99})


if __name__ == "__main__":
    main()
