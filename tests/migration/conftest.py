"""Shared helpers for the live-migration tests: real nano engines (the built-in tiny model), requests
whose reference outputs come from an unmigrated run, and free-block accounting."""

from __future__ import annotations

import asyncio

import pytest

from llumnix_dask.config import EngineConfig, MigrationConfig
from llumnix_dask.request import Request, SamplingParams


# Small enough to be quick, large enough for a few 40-token prompts and 80-token outputs.
ENGINE = EngineConfig(num_blocks=96, max_batch_size=8)
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


@pytest.fixture(scope="session")
def nano():
    """Factory of fresh nano engines (the model files are built once and cached)."""
    from llumnix_dask.engine import create_engine

    def make(instance_id: str, config: EngineConfig = ENGINE):
        return create_engine(config, instance_id)

    return make


@pytest.fixture(scope="session")
def reference(nano):
    """Tokens of each request run alone on one engine, never migrated (cached per request shape)."""
    cache: dict[tuple, list[int]] = {}
    engine = nano("reference")

    def run(request: Request) -> list[int]:
        key = (request.request_id, tuple(request.prompt_token_ids), request.sampling)
        if key not in cache:
            copy = Request.new(list(request.prompt_token_ids), request.sampling, request_id=request.request_id)
            engine.add_request(copy)
            while engine.has_work():
                engine.step()
            cache[key] = list(copy.output_token_ids)
        return cache[key]

    return run


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
