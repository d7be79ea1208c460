"""What ``llumnix-dask up``, ``status`` and ``bench`` do (the typer wrappers live in ``llumnix_dask.cli``)."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from llumnix_dask.config import EngineConfig, PolicyConfig, ServeConfig

API_KEY_ENV = "LLUMNIX_DASK_API_KEY"


def default_instances() -> int:
    """One instance per GPU when there are GPUs, else 2 (enough to see dispatch and migration on a laptop)."""
    try:
        import torch

        n = torch.cuda.device_count()
    except Exception:
        n = 0
    return n or 2


def parse_engine_args(items: list[str]) -> dict[str, Any]:
    """``["KEY=VALUE", ...]`` -> dict; a VALUE that parses as JSON (numbers, true/false, objects) is taken as such.

    >>> parse_engine_args(["tensor_parallel_size=2", "enforce_eager=true", "quantization=fp8"])
    {'tensor_parallel_size': 2, 'enforce_eager': True, 'quantization': 'fp8'}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--vllm-arg: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def engine_config_from_options(backend: str, model: str | None, *, vllm_args: list[str], **fields: Any) -> EngineConfig:
    """The EngineConfig of ``up``'s options (an option left out keeps the config's default)."""
    given = {k: v for k, v in fields.items() if v is not None}
    return EngineConfig(backend=backend, model=model, vllm_args=parse_engine_args(vllm_args), **given)


def run_up(
    instances: int | None,
    engine: EngineConfig,
    host: str,
    port: int,
    api_key: str | None,
    policy: str,
    scheduler: str | None,
    migration: bool,
    dashboard_address: str,
) -> None:
    """Start a cluster (or attach to ``scheduler``) and serve it over HTTP until Ctrl-C."""
    from rich.console import Console

    from llumnix_dask.cluster import Cluster
    from llumnix_dask.serve.server import RunningServer

    console = Console()
    n = instances or default_instances()
    policy_config = PolicyConfig(dispatch=policy, migration_enabled=migration)
    model_name = Path(engine.model).name if engine.model else ServeConfig().model_name
    serve_config = ServeConfig(host=host, port=port, api_key=api_key or os.environ.get(API_KEY_ENV), model_name=model_name)
    where = f"attaching to {scheduler}" if scheduler else f"starting {n} {engine.backend} instance(s)"
    with console.status(f"[bold]llumnix-dask[/]: {where} (the first start builds the tiny model)..."):
        cluster = Cluster(
            n_instances=n,
            engine=engine,
            address=scheduler,
            policy=policy_config,
            dashboard_address=dashboard_address,
        )
    stop_on_sigterm()
    try:
        server = RunningServer(cluster, serve_config, log_level="warning")
        rows = cluster._instance_rows()
        console.print(f"[bold green]llumnix-dask is up[/]: {len(rows)} instance(s), dispatch={policy}, "
                      f"migration={'on' if migration else 'off'}")
        console.print(f"  OpenAI API      {server.url}/v1   (model '{model_name}')")
        console.print(f"  Dask dashboard  {cluster.dashboard_link or 'n/a'}")
        console.print(f"  Dask scheduler  {cluster.scheduler_address}")
        console.print(f"  metrics         {server.url}/metrics")
        if serve_config.api_key:
            console.print("  API key         required (Authorization: Bearer ...)")
        console.print(f"Try: curl {server.url}/v1/completions -H 'Content-Type: application/json' "
                      "-d '{\"prompt\": \"Once upon a time\", \"max_tokens\": 16}'" +
                      (" -H 'Authorization: Bearer $LLUMNIX_DASK_API_KEY'" if serve_config.api_key else ""))
        console.print("Press Ctrl-C to stop.")
        server.run()
    finally:
        cluster.close()


def _sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise KeyboardInterrupt  # the same way out as Ctrl-C: the server drains, then the cluster closes


def stop_on_sigterm() -> None:
    """Shut down on SIGTERM (``kill``, ``timeout``, a service manager) as on Ctrl-C.

    uvicorn answers SIGTERM by draining its connections and then raises the signal again with the handler it
    found; with Python's default that kills the process before the cluster is closed, orphaning its workers'
    semaphores. This handler turns it into the KeyboardInterrupt that closes everything in order.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _sigterm)


def _fetch_snapshot(url: str | None, scheduler: str | None, api_key: str | None) -> dict:
    if scheduler:
        import asyncio

        from distributed.core import rpc

        from llumnix_dask.wire import call
        from llumnix_dask.wire.scheduler_api import GetSnapshot

        async def snapshot() -> dict:
            async with rpc(scheduler) as r:
                return await call(r, GetSnapshot())

        return asyncio.run(snapshot())
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(f"{url.rstrip('/')}/llumnix/snapshot", headers=headers, timeout=10)
    if resp.status_code != 200:
        raise RuntimeError(f"{url}: HTTP {resp.status_code}: {resp.text[:200]}")
    return resp.json()


def _fmt(v: Any, unit: float = 1.0) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v * unit:.1f}" if isinstance(v, float) else str(v)


def status_renderables(snap: dict) -> list[Any]:
    """What ``llumnix-dask status`` prints for a scheduler snapshot: a summary line and two tables that fit
    an 80-column terminal (instance ids are never cut)."""
    from rich import box
    from rich.table import Table

    pol, counters = snap.get("policy", {}), snap.get("counters", {})
    onoff = lambda key: "on" if pol.get(key) else "off"  # noqa: E731
    summary = (
        f"dispatch [bold]{pol.get('dispatch')}[/] · migration {onoff('migration_enabled')} · "
        f"scaling {onoff('scaling_enabled')}\n"
        f"dispatched {counters.get('dispatched', 0)} · finished {counters.get('finished', 0)} · "
        f"migrations {counters.get('migrations', 0)} ({counters.get('migrations_failed', 0)} failed)"
    )
    rows = snap.get("instances", [])
    devices = {str(r.get("device", "")) for r in rows}
    per_row_device = len(devices) > 1  # one device kind: named in the title, not in every row
    title = f"{len(rows)} instance(s)" + ("" if per_row_device or not devices else f" on {devices.pop() or '?'}")
    instances = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
    instances.add_column("instance", no_wrap=True)
    for col in (["device"] if per_row_device else []) + ["run", "queue", "KV", "freeness", "sent", "state"]:
        instances.add_column(col, justify="left" if col in ("device", "state") else "right", no_wrap=True)
    for row in rows:
        state = "draining" if row.get("terminating") else ("migrating" if row.get("migrating") else "serving")
        freeness = row.get("freeness")
        cells = [row["instance_id"]] + ([str(row.get("device", ""))] if per_row_device else []) + [
            str(row["num_running"]), str(row["num_waiting"]), f"{100 * row.get('kv_usage', 0):.0f}%",
            "-" if freeness is None or not math.isfinite(freeness) else f"{freeness:.0f}",
            str(row.get("dispatched", 0)), state]
        instances.add_row(*cells)
    latency = Table(title="rolling latency (ms)", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("priority", "requests", "TTFT mean", "TTFT P99", "TPOT mean", "TPOT P99"):
        latency.add_column(col, justify="left" if col == "priority" else "right")
    for prio, st in snap.get("latency", {}).items():
        latency.add_row(prio, str(st["ttft"]["count"]), _fmt(st["ttft"]["mean"], 1e3), _fmt(st["ttft"]["p99"], 1e3),
                        _fmt(st["tpot"]["mean"], 1e3), _fmt(st["tpot"]["p99"], 1e3))
    return [summary, instances, latency]


def run_status(url: str | None, scheduler: str | None, api_key: str | None, as_json: bool) -> None:
    """Print the instances, counters and rolling latencies of a running server or scheduler."""
    from rich.console import Console

    snap = _fetch_snapshot(url, scheduler, api_key or os.environ.get(API_KEY_ENV))
    console = Console()
    if as_json:
        console.print_json(json.dumps(snap, default=str))
        return
    for part in status_renderables(snap):
        console.print(part)


def run_bench(
    url: str,
    trace_name: str,
    requests: int,
    rate: float,
    arrival: str,
    cv: float,
    max_input: int,
    max_output: int,
    length_scale: float,
    high_priority: float,
    api_key: str | None,
    model: str,
    seed: int,
    out: str | None,
    progress: bool,
) -> dict:
    """Replay a generated trace against ``url``; print TTFT/TPOT/E2E mean and P99; write JSON."""
    import asyncio

    from rich.console import Console
    from rich.table import Table

    from llumnix_dask.serve.bench import records_as_dicts, replay, scale_trace_lengths, summary
    from llumnix_dask.workloads import generate_trace

    trace = generate_trace(trace_name, requests, rate, arrival=arrival, cv=cv,
                           high_priority_fraction=high_priority, seed=seed)
    trace = scale_trace_lengths(trace, max_input, max_output, length_scale)
    start = time.perf_counter()
    records = asyncio.run(replay(url.rstrip("/"), trace, api_key=api_key or os.environ.get(API_KEY_ENV),
                                 model=model, seed=seed, progress=progress))
    result = {"url": url, "trace": trace.describe(), "summary": summary(records, time.perf_counter() - start),
              "requests": records_as_dicts(records)}
    table = Table(title=f"{trace.name}: {result['summary']['ok']}/{len(records)} ok")
    for col in ("metric", "mean (ms)", "P50 (ms)", "P99 (ms)"):
        table.add_column(col)
    for metric in ("ttft", "tpot", "e2e"):
        s = result["summary"][metric]
        table.add_row(metric.upper(), _fmt(s["mean"], 1e3), _fmt(s["p50"], 1e3), _fmt(s["p99"], 1e3))
    console = Console()
    console.print(table)
    if result["summary"].get("first_error"):
        console.print(f"[red]first error:[/] {result['summary']['first_error']}")
    path = Path(out) if out else Path("bench_results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1, default=str))
    console.print(f"wrote {path}")
    return result
