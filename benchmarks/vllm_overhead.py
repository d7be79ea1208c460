"""What does llumnix-dask cost over the vLLM engine it wraps?

One llumnix-dask instance with the vllm backend (``llumnix-dask up --backend vllm --instances 1``: a Dask
scheduler with the global scheduler, one worker hosting the vLLM engine, the frontend and its HTTP
server) against vLLM's own OpenAI server (``python -m vllm.entrypoints.openai.api_server``), both as
separate processes on this machine, with the same model, the same engine settings (vLLM's defaults:
compiled mode, its CPU block size; the same KV cache and thread count), the same client
(``llumnix_dask.serve.bench.replay``: streamed /v1/completions, token-id prompts, ``ignore_eos``) and the
same trace, one server after the other.

Reported: output-token throughput over the run (from the first request sent to the last token received)
and TTFT / TPOT / E2E percentiles, measured by the client. Targets: throughput >= 90% of vLLM's and
P50 TTFT within 1.2x of vLLM's.

    python benchmarks/vllm_overhead.py                    # saturating load, ~4 minutes on 2 CPU cores
    python benchmarks/vllm_overhead.py --requests 200 --rate 6 --model tiny   # light load
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _common import RESULTS, print_rows, ratio, save  # noqa: E402

from llumnix_dask.config import TinyModelConfig  # noqa: E402

# ~50M parameters: decode steps long enough that the serving stack's per-token costs are not the whole story.
MODELS = {
    "50m": TinyModelConfig(hidden_size=768, num_layers=8, num_heads=12, num_kv_heads=4, intermediate_size=2048),
    "tiny": TinyModelConfig(),
}
SERVED_NAME = "bench-model"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(model: str, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "VLLM_CPU_OMP_THREADS_BIND": "nobind",
           "VLLM_NO_USAGE_STATS": "1"}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--port", str(port),
           "--host", "127.0.0.1", "--served-model-name", SERVED_NAME, "--dtype", "float32",
           "--kv-cache-memory-bytes", str(args.kv_cache_mb << 20), "--max-num-seqs", str(args.max_batch_size),
           "--seed", "0", "--disable-log-stats"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def start_llumnix(model: str, port: int, args: argparse.Namespace, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llumnix_dask.cli", "up", "--backend", "vllm", "--instances", "1", "--model", model,
           "--port", str(port), "--dashboard-address", ":0", "--max-batch-size", str(args.max_batch_size),
           "--threads-per-instance", str(args.threads),
           "--vllm-arg", f"kv_cache_memory_bytes={args.kv_cache_mb << 20}"]
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def measure(name: str, url: str, trace, warmup, args: argparse.Namespace) -> dict:
    from llumnix_dask.serve.bench import replay, summary

    model = SERVED_NAME if name == "vllm" else ""
    asyncio.run(replay(url, warmup, model=model, seed=1, progress=False))  # compile caches, connections
    start = time.perf_counter()
    records = asyncio.run(replay(url, trace, model=model, seed=args.seed, progress=True))
    wall = time.perf_counter() - start
    ok = [r for r in records if r.ok]
    end = max(r.e2e + (trace.arrival_s[r.index]) for r in ok) if ok else wall
    out = summary(records, wall)
    out["output_tokens"] = int(sum(r.output_len for r in ok))
    out["throughput_tok_s"] = out["output_tokens"] / end if end else None
    return {"server": name, "summary": out, "ttfts": [r.ttft for r in ok]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="50m")
    parser.add_argument("--requests", type=int, default=400)
    # Above what one instance serves on this 2-core machine (~600 output tokens/s): throughput is then the
    # servers' own, not the offered load.
    parser.add_argument("--rate", type=float, default=30.0, help="Poisson arrivals, requests per second")
    parser.add_argument("--trace", default="M-M", help="length preset, scaled and clipped below")
    parser.add_argument("--max-input", type=int, default=256)
    parser.add_argument("--max-output", type=int, default=128)
    parser.add_argument("--length-scale", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="CPU threads of the engine in both servers")
    parser.add_argument("--kv-cache-mb", type=int, default=512)
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--order", default="vllm,llumnix", help="which server runs first")
    args = parser.parse_args()

    from llumnix_dask.engine.nano.tiny_model import make_tiny_model
    from llumnix_dask.serve.bench import scale_trace_lengths
    from llumnix_dask.workloads import generate_trace

    work = Path(tempfile.mkdtemp(prefix="llumnix-vllm-overhead-"))
    model = str(make_tiny_model(work / "model", MODELS[args.model]))
    trace = scale_trace_lengths(generate_trace(args.trace, args.requests, args.rate, seed=args.seed),
                                args.max_input, args.max_output, args.length_scale)
    warmup = scale_trace_lengths(generate_trace(args.trace, 8, 4.0, seed=99), args.max_input, args.max_output,
                                 args.length_scale)
    runs = {}
    for name in args.order.split(","):
        port, log = free_port(), work / f"{name}.log"
        proc = (start_vllm if name == "vllm" else start_llumnix)(model, port, args, log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_ready(url, proc, log)
            runs[name] = measure(name, url, trace, warmup, args)
        finally:
            stop(proc)
        print(f"{name}: log in {log}")

    rows = []
    for name, run in runs.items():
        s = run["summary"]
        rows.append({"server": name, "ok": s["ok"], "tok_s": s["throughput_tok_s"],
                     "ttft_p50": 1e3 * s["ttft"]["p50"], "ttft_p99": 1e3 * s["ttft"]["p99"],
                     "tpot_p50": 1e3 * s["tpot"]["p50"], "e2e_p50": 1e3 * s["e2e"]["p50"]})
    print(f"\nmodel {args.model}, trace {trace.name}: {len(trace)} requests at {args.rate}/s, "
          f"mean in/out {trace.input_lens.mean():.0f}/{trace.output_lens.mean():.0f} tokens, {args.threads} engine threads")
    print_rows(rows, [("server", "server", 0), ("ok", "ok", 0), ("tok_s", "out tok/s", 1), ("ttft_p50", "TTFT P50 ms", 1),
                      ("ttft_p99", "TTFT P99 ms", 1), ("tpot_p50", "TPOT P50 ms", 1), ("e2e_p50", "E2E P50 ms", 1)])
    v, ld = runs["vllm"]["summary"], runs["llumnix"]["summary"]
    result = {
        "throughput_ratio": ratio(ld["throughput_tok_s"], v["throughput_tok_s"]),
        "ttft_p50_ratio": ratio(ld["ttft"]["p50"], v["ttft"]["p50"]),
        "ttft_p99_ratio": ratio(ld["ttft"]["p99"], v["ttft"]["p99"]),
        "tpot_p50_ratio": ratio(ld["tpot"]["p50"], v["tpot"]["p50"]),
    }
    print("\n" + "\n".join(f"{k}: {None if x is None else round(x, 3)}" for k, x in result.items()))
    _plot(runs, RESULTS / "vllm_overhead.png")
    save("vllm_overhead", {"args": vars(args), "model": MODELS[args.model].__dict__, "trace": trace.describe(),
                           "result": result, "runs": {k: r["summary"] for k, r in runs.items()},
                           "load_average": os.getloadavg()})


def _plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        t = np.sort(np.asarray(run["ttfts"])) * 1e3
        ax.plot(t, np.arange(1, len(t) + 1) / len(t), label=name)
    ax.set_xlabel("TTFT (ms, client-measured)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("llumnix-dask (1 vllm instance) vs vLLM's OpenAI server")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
