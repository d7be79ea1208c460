"""Replay a trace against a running llumnix-dask (or any OpenAI-compatible) server and measure latency.

Each request is a streamed ``/v1/completions`` call whose prompt is a list of token ids of the trace's
input length and whose ``max_tokens`` is its output length (``ignore_eos`` keeps the length exact), sent
at the trace's arrival time. TTFT = first streamed chunk, TPOT = mean gap between later chunks, E2E = last
chunk; all measured by the client, so they include HTTP and queueing.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from llumnix_dask.scheduler.stats import summarize
from llumnix_dask.workloads import Trace

# Token ids used to build prompts: inside any tokenizer's vocabulary, away from special tokens.
PROMPT_TOKEN_RANGE = (10, 250)


@dataclass
class RequestRecord:
    index: int
    input_len: int
    output_len: int
    high_priority: bool
    ok: bool = False
    error: str | None = None
    ttft: float | None = None
    tpot: float | None = None
    e2e: float | None = None
    num_chunks: int = 0


def scale_trace_lengths(trace: Trace, max_input: int, max_output: int, scale: float = 1.0) -> Trace:
    """Shrink lengths for a small machine: multiply by ``scale``, then clip (keeps the trace's shape)."""
    import numpy as np

    inputs = np.clip(np.ceil(trace.input_lens * scale), 1, max_input).astype(np.int64)
    outputs = np.clip(np.ceil(trace.output_lens * scale), 1, max_output).astype(np.int64)
    return Trace(trace.arrival_s, inputs, outputs, trace.high_priority, trace.name)


async def _one(client: httpx.AsyncClient, url: str, headers: dict, model: str, rec: RequestRecord, prompt: list[int]) -> None:
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": rec.output_len,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
    }
    if rec.high_priority:  # only when needed: other OpenAI-compatible servers may not know the field
        body["priority"] = "high"
    start = time.perf_counter()
    times: list[float] = []
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                rec.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode()[:200]}"
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    rec.error = payload["error"].get("message")
                    return
                if payload.get("choices"):
                    times.append(time.perf_counter())
    except Exception as exc:  # connection refused, timeout
        rec.error = f"{type(exc).__name__}: {exc}"
        return
    rec.num_chunks = len(times)
    if times:
        rec.ok = True
        rec.ttft = times[0] - start
        rec.e2e = times[-1] - start
        rec.tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None


async def replay(
    url: str,
    trace: Trace,
    *,
    api_key: str | None = None,
    model: str = "",
    seed: int = 0,
    progress: bool = True,
    timeout_s: float = 600.0,
) -> list[RequestRecord]:
    """Send every request of ``trace`` at its arrival time; returns one record per request."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    records = [
        RequestRecord(i, int(trace.input_lens[i]), int(trace.output_lens[i]), bool(trace.high_priority[i]))
        for i in range(len(trace))
    ]
    prompts = [[rng.randrange(*PROMPT_TOKEN_RANGE) for _ in range(r.input_len)] for r in records]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    bar = tqdm(total=len(records), desc="requests", unit="req", disable=not progress)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        start = time.perf_counter()

        async def fire(rec: RequestRecord) -> None:
            delay = float(trace.arrival_s[rec.index]) - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            await _one(client, url, headers, model, rec, prompts[rec.index])
            bar.update(1)

        await asyncio.gather(*(fire(r) for r in records))
    bar.close()
    return records


def summary(records: list[RequestRecord], wall_s: float | None = None) -> dict[str, Any]:
    """TTFT / TPOT / E2E count, mean, p50, p99 (seconds) over the successful requests."""
    ok = [r for r in records if r.ok]
    out: dict[str, Any] = {
        "requests": len(records),
        "ok": len(ok),
        "failed": len(records) - len(ok),
        "ttft": summarize(r.ttft for r in ok),
        "tpot": summarize(r.tpot for r in ok if r.tpot is not None),
        "e2e": summarize(r.e2e for r in ok),
    }
    if wall_s is not None:
        out["wall_s"] = wall_s
    errors = [r.error for r in records if r.error]
    if errors:
        out["first_error"] = errors[0]
    return out


def records_as_dicts(records: list[RequestRecord]) -> list[dict]:
    return [asdict(r) for r in records]
