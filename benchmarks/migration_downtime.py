"""How long is a request stopped when it migrates, compared with recomputing it or copying it blocking?

Two Dask worker processes on this machine each host an engine of the chosen backend, nano or vllm (a
random-weight Llama big enough that KV copies matter: 6 layers x 384 wide, 18 KiB of KV per token, ~75 MB
at 4k tokens; one torch thread per engine; vLLM in its default compiled mode with 32-token blocks, the
smallest its CPU attention takes). For each sequence length the same request is measured four ways, side by side:

* live migration (Llumnix): multi-stage, the request decodes on the source while its blocks are copied;
  ``downtime`` is the pause (request out of every batch) until the destination committed it, ``total``
  the whole migration, ``gap`` the client-visible gap between the last token on the source and the first
  on the destination;
* blocking copy: ``max_stages=1`` - stop, copy all blocks, resume on the destination;
* recompute: re-prefill prompt + generated tokens on the destination (what a system without KV migration
  does), time to its next token;
* source slowdown: mean start-to-start interval of the source's decode steps during the live stages,
  relative to its last 10 decode steps before the migration (a background request keeps the source's
  batch busy after the pause).

Prints a table and writes benchmarks/results/migration_downtime[_vllm].json. Targets: downtime(4k) /
downtime(256) <= 1.5, recompute(4k) / downtime(4k) >= 30 (nano) / >= 20 (vllm), source slowdown <= 10%.

    python benchmarks/migration_downtime.py                  # ~2-3 minutes on 2 CPU cores
    python benchmarks/migration_downtime.py --backend vllm
    python benchmarks/migration_downtime.py --lengths 256 1024 --repeats 1
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_rows, ratio, save  # noqa: E402

# The engine host of the migration tests (tests/engine_runner.py); Dask's spawned workers inherit this path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from llumnix_dask.config import EngineConfig, MigrationConfig, TinyModelConfig, worker_dask_config  # noqa: E402
from llumnix_dask.request import Request, SamplingParams  # noqa: E402

BENCH_MODEL = TinyModelConfig(
    hidden_size=384, num_layers=6, num_heads=6, num_kv_heads=6, intermediate_size=1024, max_position_embeddings=8192
)
LIVE = MigrationConfig()  # paper defaults: 3 stages, last stage <= 16 blocks, 16 MB messages
BLOCKING = dataclasses.replace(LIVE, max_stages=1)
VLLM_BLOCK_SIZE = 32
# Keep freed receive buffers in the workers' heaps, as the llumnix cluster does (see config.WORKER_PRE_SPAWN_ENV).
WORKER_MALLOC = worker_dask_config()


# -- worker side (pickled by value into the two worker processes) ---------------------------------------
def engine_config(backend: str, model_path: str, num_blocks: int) -> EngineConfig:
    # One core per instance: two instances share this machine's CPU.
    config = EngineConfig(model=model_path, num_blocks=num_blocks, max_batched_tokens=4096, cpu_threads=1)
    if backend == "vllm":
        config = dataclasses.replace(config, backend="vllm", block_size=VLLM_BLOCK_SIZE)
    return config


def start_instance(config, dask_worker):
    from llumnix_dask.engine import create_engine
    from llumnix_dask.migration import MigrationDestination, register_migration_handlers
    from engine_runner import EngineRunner

    engine = create_engine(config, str(dask_worker.name))
    destination = MigrationDestination(engine, LIVE)
    register_migration_handlers(dask_worker, destination)
    dask_worker._bench = {"engine": engine, "runner": EngineRunner(engine), "dst": destination}
    return engine.export_blocks([0]).nbytes


def add_request(request, dask_worker):
    dask_worker._bench["runner"].add(request)


async def wait_tokens(request_id, n, dask_worker, timeout=600.0):
    engine = dask_worker._bench["engine"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        req = engine.get_request(request_id)
        if req is not None and req.num_output_tokens >= n:
            return req.num_output_tokens
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{request_id} did not reach {n} tokens")


async def migrate(request_id, dst_address, config, dask_worker):
    from llumnix_dask.migration import DaskEndpoint, migrate_out

    bench = dask_worker._bench
    runner = bench["runner"]
    n_before = len(runner.step_times)
    start = time.perf_counter()
    result = await migrate_out(runner.migration_engine, request_id, DaskEndpoint(dst_address, dask_worker.rpc), config)
    # The live stages: the request decodes on the source while its blocks are copied.
    live_end = start + sum(st.seconds for st in result.stages if not st.paused)
    steps = runner.step_times
    during = [s for s, _, _ in steps[n_before:] if start <= s <= live_end]
    before = [s for s, _, _ in steps[max(0, n_before - 11) : n_before]]  # the last 10 decode intervals

    def interval(starts):
        return (starts[-1] - starts[0]) / (len(starts) - 1) if len(starts) >= 2 else None

    out = result.to_dict()
    out["step_interval_before_s"] = interval(before)
    out["step_interval_during_s"] = interval(during)
    out["steps_during"] = len(during)
    return out


def token_gap(request_id, index, dask_worker):
    """Seconds between output token index-1 (last on the source) and index (first here), and the median
    interval between the tokens before it."""
    req = dask_worker._bench["engine"].get_request(request_id)
    times = req.token_times
    before = [b - a for a, b in zip(times[max(0, index - 20) : index - 1], times[max(1, index - 19) : index])]
    return times[index] - times[index - 1], statistics.median(before) if before else None


async def recompute(request, dask_worker):
    """Time to the next token of a copy of ``request`` that must re-prefill all its tokens here."""
    bench = dask_worker._bench
    n = request.num_output_tokens
    start = time.perf_counter()
    bench["runner"].add(request)
    await wait_tokens(request.request_id, n + 1, dask_worker)
    elapsed = time.perf_counter() - start
    bench["engine"].abort(request.request_id)
    return elapsed


def snapshot(request_id, dask_worker):
    req = dask_worker._bench["engine"].get_request(request_id)
    return None if req is None else (list(req.prompt_token_ids), list(req.output_token_ids))


def abort(request_id, dask_worker):
    return dask_worker._bench["engine"].abort(request_id)


def stop_instance(dask_worker):
    dask_worker._bench["runner"].stop()
    dask_worker._bench["dst"].close()
    close = getattr(dask_worker._bench["engine"], "close", None)
    if close is not None:
        close()


# -- driver ----------------------------------------------------------------------------------------
def prompt(length: int, salt: int) -> list[int]:
    return [(salt * 131 + 7 * i) % 500 + 3 for i in range(length)]


def endless(rid: str, tokens: list[int], arrival: float) -> Request:
    return Request.new(tokens, SamplingParams(max_tokens=100_000, ignore_eos=True), request_id=rid, arrival_time=arrival)


def measure_length(client, a, b, length, rep) -> dict:
    rid = f"seq{length}-{rep}"
    client.run(add_request, endless(rid, prompt(length - 20, rep), time.time()), workers=[a])
    run1 = lambda f, *args, on: client.run(f, *args, workers=[on])[on]  # noqa: E731
    run1(wait_tokens, rid, 20, on=a)  # prefilled and decoding (the baseline steps are decode steps)
    live = run1(migrate, rid, b, LIVE, on=a)
    k = live["resume_index"]
    run1(wait_tokens, rid, k + 1, on=b)
    gap, interval = run1(token_gap, rid, k, on=b)
    run1(wait_tokens, rid, k + 4, on=b)
    blocking = run1(migrate, rid, a, BLOCKING, on=b)
    prompt_ids, output_ids = run1(snapshot, rid, on=a)
    copy = Request.new(prompt_ids, SamplingParams(max_tokens=100_000, ignore_eos=True), request_id=f"{rid}-recompute")
    copy.output_token_ids = output_ids
    recompute_s = run1(recompute, copy, on=b)
    run1(abort, rid, on=a)
    before, during = live["step_interval_before_s"], live["step_interval_during_s"]
    return {
        "tokens": live["num_kv_tokens"],
        "outcome": live["outcome"],
        "stages": len(live["stages"]),
        "stage_blocks": [s["blocks"] for s in live["stages"]],
        "kv_mb": sum(s["bytes"] for s in live["stages"]) / 2**20,
        "downtime_ms": 1e3 * live["downtime_s"],
        "total_ms": 1e3 * live["total_s"],
        "gap_ms": None if gap is None else 1e3 * gap,
        "token_interval_ms": None if interval is None else 1e3 * interval,
        "blocking_ms": 1e3 * blocking["downtime_s"],
        "blocking_outcome": blocking["outcome"],
        "recompute_ms": 1e3 * recompute_s,
        "step_before_ms": None if before is None else 1e3 * before,
        "step_during_ms": None if during is None else 1e3 * during,
        "slowdown_pct": None if not before or not during else 100 * (during / before - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=2, help="measurements per length (the median is shown)")
    parser.add_argument("--backend", choices=["nano", "vllm"], default="nano")
    args = parser.parse_args()

    import dask
    from distributed import Client, LocalCluster

    from llumnix_dask.engine.nano.tiny_model import make_tiny_model

    model_dir = Path(tempfile.mkdtemp(prefix="llumnix-bench-model-"))
    model_path = str(make_tiny_model(model_dir, BENCH_MODEL))
    kv_per_token = BENCH_MODEL.num_layers * 2 * BENCH_MODEL.num_kv_heads * (BENCH_MODEL.hidden_size // BENCH_MODEL.num_heads) * 4
    block_size = VLLM_BLOCK_SIZE if args.backend == "vllm" else 16
    num_blocks = (max(args.lengths) * 3) // block_size + 64  # the request, a recompute copy and headroom
    with dask.config.set(WORKER_MALLOC), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        block_bytes = client.run(start_instance, engine_config(args.backend, model_path, num_blocks))[a]
        # A short background request keeps the source decoding something else throughout.
        client.run(add_request, endless("background", prompt(32, 99), 0.0), workers=[a])
        # Warm up both directions (connections, thread pools, first-use allocations) before measuring.
        for rep in range(2):
            measure_length(client, a, b, 64, -1 - rep)
        rows = []
        for length in tqdm(args.lengths, desc="lengths"):
            samples = [measure_length(client, a, b, length, rep) for rep in range(args.repeats)]
            row = {"length": length}
            for key in samples[0]:
                values = [s[key] for s in samples]
                numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
                row[key] = statistics.median(numeric) if len(numeric) == len(values) else values[0]
            row["samples"] = samples
            rows.append(row)
        client.run(stop_instance)

    first, last = rows[0], rows[-1]
    summary = {
        "downtime_ratio_longest_vs_shortest": ratio(last["downtime_ms"], first["downtime_ms"]),
        "recompute_over_downtime_longest": ratio(last["recompute_ms"], last["downtime_ms"]),
        "blocking_over_downtime_longest": ratio(last["blocking_ms"], last["downtime_ms"]),
        "max_source_slowdown_pct": max((r["slowdown_pct"] for r in rows if r["slowdown_pct"] is not None), default=None),
    }
    print(f"\nbackend: {args.backend}; model: {BENCH_MODEL.num_layers} layers x {BENCH_MODEL.hidden_size}, KV {kv_per_token / 1024:.0f} KiB/token, "
          f"block {block_bytes / 1024:.0f} KiB; live = {LIVE.max_stages} stages max, last <= {LIVE.last_stage_max_blocks} blocks")
    print_rows(rows, [
        ("length", "len", 0), ("tokens", "kv tok", 0), ("kv_mb", "KV MB", 1), ("stages", "stages", 0),
        ("downtime_ms", "downtime ms", 1), ("gap_ms", "token gap ms", 1), ("token_interval_ms", "tok intvl ms", 1),
        ("total_ms", "total ms", 1), ("blocking_ms", "blocking ms", 1), ("recompute_ms", "recompute ms", 1),
        ("step_before_ms", "step ms", 1), ("step_during_ms", "step mig ms", 1), ("slowdown_pct", "slowdown %", 1),
    ])
    print("\n" + "\n".join(f"{k}: {v if v is None else round(v, 2)}" for k, v in summary.items()))
    name = "migration_downtime" if args.backend == "nano" else f"migration_downtime_{args.backend}"
    save(name, {"backend": args.backend, "model": dataclasses.asdict(BENCH_MODEL), "block_bytes": block_bytes,
                                "config": dataclasses.asdict(LIVE), "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
