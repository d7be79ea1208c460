"""Helpers of the live-migration tests (imported by name; fixtures live in conftest.py): engine and
migration configs, requests, free-block accounting, a fault-injecting endpoint."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from llumnix_dask.config import EngineConfig, MigrationConfig
from llumnix_dask.request import Request, SamplingParams

# Every suite that takes the ``make_engine`` fixture runs on each backend.
BACKENDS = ["nano", pytest.param("vllm", marks=pytest.mark.vllm)]

# Small enough to be quick, large enough for a few 40-token prompts and 80-token outputs.
ENGINE = EngineConfig(num_blocks=96, max_batch_size=8)
# vLLM's CPU attention needs blocks of a multiple of 32 tokens; eager mode starts an engine in well under a
# second (vLLM's compiled mode is what the benchmarks run).
VLLM_BLOCK_SIZE = 32


def engine_config(backend: str, config: EngineConfig = ENGINE) -> EngineConfig:
    """``config`` for ``backend``: the same cache in blocks, the backend's block size."""
    if backend == "nano":
        return config
    return dataclasses.replace(config, backend="vllm", block_size=VLLM_BLOCK_SIZE, vllm_args={"enforce_eager": True})
# Several live stages even for short requests (each moves at least one completed block), and with the
# tiny model's 64 KiB blocks, gathers of 2 blocks sent 3 to a message: chunking is exercised too.
FAST = MigrationConfig(last_stage_max_blocks=1, max_stages=4, dst_watermark_blocks=4, min_chunk_bytes=5 << 16,
                       max_gather_bytes=2 << 16, stage_timeout_s=5.0)


def make_request(i: int, *, max_tokens: int = 60, seeded: bool = False, prompt_len: int = 40) -> Request:
    """Request ``r<i>``: greedy, or sampled at temperature 1 with seed i (reproducible across migration)."""
    sampling = SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if seeded else 0.0,
        top_k=0,
        seed=1000 + i if seeded else None,
        ignore_eos=True,
    )
    prompt = [(37 * i + 11 * j) % 480 + 3 for j in range(prompt_len)]
    return Request.new(prompt, sampling, request_id=f"r{i}", arrival_time=float(i))


def free_blocks(engine) -> int:
    load = engine.load()
    return load.total_blocks - load.used_blocks


def run(coro):
    return asyncio.run(coro)


class ScriptedEndpoint:
    """An in-process endpoint with hooks around each call, to inject faults at exact protocol points.

    ``hooks`` maps "before_<call>" / "after_<call>" (call = reserve, send_blocks, commit, abort, enqueue)
    to a function ``hook(n)`` (n = how many times that call happened before, 0-based) that may act on the
    engines, raise (a failing destination) or return an awaitable that never finishes (a silent one).
    """

    def __init__(self, destination, hooks=None):
        from llumnix_dask.migration import InProcessEndpoint

        self.inner = InProcessEndpoint(destination)
        self.name = self.inner.name
        self.hooks = dict(hooks or {})
        self.calls: dict[str, int] = {}

    async def _hook(self, when: str, call: str) -> None:
        hook = self.hooks.get(f"{when}_{call}")
        if hook is not None:
            out = hook(self.calls.get(call, 0))
            if asyncio.iscoroutine(out) or isinstance(out, asyncio.Future):
                await out

    async def _do(self, call: str, *args):
        await self._hook("before", call)
        result = await getattr(self.inner, call)(*args)
        await self._hook("after", call)
        self.calls[call] = self.calls.get(call, 0) + 1
        return result

    async def reserve(self, *args):
        return await self._do("reserve", *args)

    async def send_blocks(self, *args):
        return await self._do("send_blocks", *args)

    async def commit(self, *args):
        return await self._do("commit", *args)

    async def abort(self, *args):
        return await self._do("abort", *args)

    async def enqueue(self, *args):
        return await self._do("enqueue", *args)


async def forever():
    """A destination that never answers."""
    await asyncio.Event().wait()
