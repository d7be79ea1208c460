"""Iterating a stream that lives on one event loop (the Cluster's, in the Dask client's thread) from elsewhere:
a plain thread (scripts, Jupyter cells) or another event loop (FastAPI, a notebook's own loop). Stopping
early cancels the producer, whose ``finally`` aborts the request on its instance."""

from __future__ import annotations

import asyncio
import queue
from typing import Any, AsyncIterator, Callable, Iterator

_DONE = object()


def iterate_in_thread(produce: Callable[[], AsyncIterator[Any]], loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """Items of ``produce()`` (an async iterator started on ``loop``), handed to this thread as they come."""
    out: queue.Queue = queue.Queue()

    async def pump() -> None:
        try:
            async for item in produce():
                out.put(item)
        except BaseException as exc:  # CancelledError too: the consumer went away
            out.put(exc)
        finally:
            out.put(_DONE)

    fut = asyncio.run_coroutine_threadsafe(pump(), loop)
    finished = False
    try:
        while True:
            item = out.get()
            if item is _DONE:
                finished = True
                return
            if isinstance(item, BaseException):
                finished = True
                raise item
            yield item
    finally:
        if not finished:
            fut.cancel()


async def iterate_across_loops(agen: AsyncIterator[Any], loop: asyncio.AbstractEventLoop) -> AsyncIterator[Any]:
    """Items of ``agen`` (an async iterator of ``loop``) from the caller's event loop."""
    caller = asyncio.get_running_loop()
    if caller is loop:
        async for item in agen:
            yield item
        return
    local: asyncio.Queue = asyncio.Queue()

    async def pump() -> None:
        try:
            async for item in agen:
                caller.call_soon_threadsafe(local.put_nowait, item)
        except BaseException as exc:
            caller.call_soon_threadsafe(local.put_nowait, exc)
        finally:
            caller.call_soon_threadsafe(local.put_nowait, _DONE)

    fut = asyncio.run_coroutine_threadsafe(pump(), loop)
    completed = False
    try:
        while True:
            item = await local.get()
            if item is _DONE:
                completed = True
                return
            if isinstance(item, BaseException):
                completed = True
                raise item
            yield item
    finally:
        if not completed:
            fut.cancel()
