"""Soak: many concurrent streams over HTTP, live migration on, and one instance killed halfway.

An embedded cluster of nano instances (or vLLM ones, ``--backend vllm``; the built-in tiny model) serves the OpenAI API on a loopback port;
an asyncio client opens every stream at once (``/v1/completions``, ``stream: true``, greedy and seeded).
When half of the requests have finished, one instance's worker process is killed (SIGKILL). Every request
must end one way or another: it completes (on its instances), completes after its instance died
(*continued* elsewhere), ends with an error message, or is *lost* (no end within the deadline, the failure
this benchmark exists to catch). Also measured: P99 TTFT, the longest gap between two chunks of any stream
that never touched the killed instance, and the peak RSS of all processes of the cluster.

    python benchmarks/soak.py                         # 1,000 streams on 4 instances, ~2-4 minutes on 2 cores
    python benchmarks/soak.py --requests 200 --instances 3
    python benchmarks/soak.py --backend vllm --requests 300 --instances 3

Prints a table; writes benchmarks/results/soak[_vllm].json and soak[_vllm].png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import signal
import tempfile
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, save  # noqa: E402

from llumnix_dask import Cluster, EngineConfig, PolicyConfig, ServeConfig  # noqa: E402
from llumnix_dask.scheduler.stats import percentile  # noqa: E402
from llumnix_dask.serve.server import start_server  # noqa: E402


class Record:
    def __init__(self, index: int) -> None:
        self.index = index
        self.rid: str | None = None
        self.start = 0.0
        self.times: list[float] = []
        self.end: str | None = None  # "completed", "error"
        self.error: str | None = None


async def one(client: httpx.AsyncClient, url: str, rec: Record, body: dict, finished) -> None:
    rec.start = time.monotonic()
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                rec.end, rec.error = "error", f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    rec.end, rec.error = "error", event["error"].get("message")
                    return
                rec.rid = event.get("id", rec.rid)
                rec.times.append(time.monotonic())
                if event["choices"] and event["choices"][0].get("finish_reason"):
                    rec.end = "completed"
    except Exception as exc:  # connection failure: counted as an error, never silently
        rec.end, rec.error = "error", f"{type(exc).__name__}: {exc}"
    finally:
        with finished.get_lock():
            finished.value += 1


def client_main(url: str, bodies: list[dict], deadline_s: float, finished, out: str) -> None:
    """The client, in a process of its own (as a real client would be): every stream at once."""
    records = [Record(i) for i in range(len(bodies))]

    async def drive() -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=deadline_s, limits=limits) as client:
            tasks = [asyncio.ensure_future(one(client, url, r, b, finished)) for r, b in zip(records, bodies)]
            done, pending = await asyncio.wait(tasks, timeout=deadline_s)
            for task in pending:
                task.cancel()

    asyncio.run(drive())
    Path(out).write_text(json.dumps([r.__dict__ for r in records]))


def cluster_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, nargs=2, default=[16, 64], help="output length range")
    ap.add_argument("--deadline-s", type=float, default=600.0, help="a request not ended by then is lost")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", choices=["nano", "vllm"], default="nano")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    engine = EngineConfig(num_blocks=1024, max_batch_size=64)
    if args.backend == "vllm":  # blocks of 32 tokens (vLLM's CPU attention), same KV room; compiled mode
        engine = EngineConfig(backend="vllm", num_blocks=512, block_size=32, max_batch_size=64)
    name = "soak" if args.backend == "nano" else f"soak_{args.backend}"
    policy = PolicyConfig(dispatch="llumnix", migration_enabled=True)
    completions: dict[str, object] = {}
    with Cluster(args.instances, engine=engine, policy=policy, dashboard_address=None) as cluster:
        server = start_server(cluster, ServeConfig(port=0))
        metrics_hook = cluster.frontend.on_finished

        def on_finished(done):
            completions[done.request_id] = done
            metrics_hook(done)

        cluster.frontend.on_finished = on_finished
        worker_pids = cluster.client.run(os.getpid)
        by_instance = {iid: worker_pids[row["address"]] for iid, row in cluster.instances().iterrows()}
        pids = [os.getpid(), *psutil.Process(os.getpid()).children(recursive=True)]
        pids = [p if isinstance(p, int) else p.pid for p in pids]
        peak = [cluster_rss(pids)]
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.wait(0.5):
                current = [os.getpid(), *(c.pid for c in psutil.Process(os.getpid()).children(recursive=True))]
                peak[0] = max(peak[0], cluster_rss(current))

        threading.Thread(target=sample, daemon=True).start()
        bodies = []
        for i in range(args.requests):
            body = {"prompt": [rng.randrange(10, 250) for _ in range(rng.randrange(8, 64))],
                    "max_tokens": rng.randrange(*args.max_tokens), "ignore_eos": True, "stream": True}
            if i % 2:
                body.update(temperature=1.0, seed=i)
            bodies.append(body)
        killed: dict = {}
        ctx = multiprocessing.get_context("spawn")
        finished = ctx.Value("i", 0)
        out = Path(tempfile.mkdtemp(prefix="llumnix-soak-")) / "streams.json"
        t0 = time.monotonic()
        client = ctx.Process(target=client_main, args=(server.url, bodies, args.deadline_s, finished, str(out)))
        client.start()
        while len(completions) < args.requests // 2 and client.is_alive():  # half done, as the server sees it
            time.sleep(0.01)
        if client.is_alive():
            rows = cluster.instances()
            busiest = rows["num_running"].idxmax()
            os.kill(by_instance[busiest], signal.SIGKILL)
            killed.update(instance=busiest, at=time.monotonic() - t0, finished_before=len(completions),
                          running_there=int(rows.loc[busiest, "num_running"]))
            print(f"killed {busiest} ({killed['running_there']} running there) after {len(completions)} requests "
                  "finished", flush=True)
        client.join(args.deadline_s + 60)
        records = [Record(0) for _ in range(args.requests)]
        for rec, raw in zip(records, json.loads(out.read_text())):
            rec.__dict__.update(raw)
        out.unlink()
        wall = time.monotonic() - t0
        stop_sampling.set()
        recovered = cluster.frontend.health.num_recovered
        instances_after = len(cluster.instances())
        server.stop()

    dead = killed.get("instance")
    counts = {"completed": 0, "continued": 0, "errored": 0, "lost": 0}
    ttfts, healthy_gaps, server_gaps, errors = [], [], [], []
    for rec in records:
        done = completions.get(rec.rid)
        touched = done is not None and dead in getattr(done, "instances", [])
        if rec.end == "completed":
            counts["continued" if touched and done.instances[-1] != dead else "completed"] += 1
        elif rec.end == "error":
            counts["errored"] += 1
            errors.append(rec.error)
        else:
            counts["lost"] += 1
        if rec.times:
            ttfts.append(rec.times[0] - rec.start)
            if not touched and len(rec.times) > 1:
                healthy_gaps.append(max(b - a for a, b in zip(rec.times, rec.times[1:])))
                if done is not None and done.max_token_gap_s is not None:
                    server_gaps.append(done.max_token_gap_s)
    stalls = sorted(((max(b - a for a, b in zip(r.times, r.times[1:])), r) for r in records if len(r.times) > 1),
                    key=lambda x: -x[0])[:5]
    worst = [{"gap_s": g, "at_s": r.times[[b - a for a, b in zip(r.times, r.times[1:])].index(g)] - t0,
              "instances": list(getattr(completions.get(r.rid), "instances", []))} for g, r in stalls]
    result = {
        "requests": args.requests, "instances": args.instances, **counts, "worst_gaps": worst,
        "recovered_by_frontend": recovered, "killed": killed, "instances_at_end": instances_after,
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p99_s": percentile(ttfts, 99),
        # Between two chunks as the client read them (includes the client's own delays on this shared CPU),
        # and between two tokens as the server's frontend received them from the instances.
        "longest_gap_healthy_stream_s": max(healthy_gaps, default=None),
        "longest_gap_healthy_stream_at_server_s": max(server_gaps, default=None),
        "peak_rss_gb": peak[0] / 2**30, "wall_s": wall, "first_errors": errors[:5],
        "load_average": os.getloadavg(),
    }
    print(f"\n{args.requests} streams on {args.instances} {args.backend} instances, {wall:.1f} s; killed {dead} "
          f"at {killed.get('at', 0):.1f} s")
    for key in ("completed", "continued", "errored", "lost"):
        print(f"  {key:<10} {counts[key]:>6}")
    print(f"  TTFT P50 {1e3 * (result['ttft_p50_s'] or 0):.0f} ms, P99 {1e3 * (result['ttft_p99_s'] or 0):.0f} ms; "
          f"longest gap of a healthy stream {result['longest_gap_healthy_stream_s'] or 0:.2f} s at the client, "
          f"{result['longest_gap_healthy_stream_at_server_s'] or 0:.2f} s at the server; "
          f"peak RSS {result['peak_rss_gb']:.2f} GB")
    _plot(records, killed, RESULTS / f"{name}.png", t0)
    save(name, {"args": vars(args), "result": result})


def _plot(records: list[Record], killed: dict, path: Path, t0: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    ends = np.sort([r.times[-1] - t0 for r in records if r.times])
    a.plot(ends, np.arange(1, len(ends) + 1), label="streams finished")
    active = [(r.start - t0, (r.times[-1] if r.times else r.start) - t0) for r in records]
    grid = np.linspace(0, max(ends, default=1), 200)
    a.plot(grid, [sum(s <= g <= e for s, e in active) for g in grid], label="streams open")
    if killed:
        a.axvline(killed["at"], color="red", linestyle="--", label=f"{killed['instance']} killed")
    a.set_xlabel("seconds (client clock)")
    a.set_ylabel("requests")
    a.legend()
    ttft = np.sort([r.times[0] - r.start for r in records if r.times])
    b.plot(ttft, np.arange(1, len(ttft) + 1) / max(len(ttft), 1))
    b.set_xlabel("TTFT (s)")
    b.set_ylabel("fraction of requests")
    fig.suptitle("soak: concurrent streams, migration on, one instance killed halfway")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
