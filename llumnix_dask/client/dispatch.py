"""Dispatch requests to the global scheduler with adaptive batching.

One round trip per request caps a frontend at about one dispatch per RPC latency. Instead, dispatches
that arrive while a round trip is in flight wait and go together in the next one: at low load every
dispatch travels alone (no added delay), under a burst the batches grow and throughput follows.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from llumnix_dask.wire import call
from llumnix_dask.wire.scheduler_api import DispatchBatch, Placement, RequestDemand


class DispatchClient:
    """``await client.place(...)`` -> the scheduler's :class:`Placement` for that request.

    ``scheduler`` returns an rpc object for the scheduler (e.g. ``lambda: pool(address)``).
    """

    def __init__(self, scheduler: Callable[[], Any], *, max_in_flight: int = 2, max_batch: int = 256) -> None:
        self._scheduler = scheduler
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self._pending: list[tuple[RequestDemand, asyncio.Future]] = []
        self._in_flight = 0
        self.num_round_trips = 0
        self.num_dispatches = 0

    async def place(
        self, request_id: str, num_prompt_tokens: int, priority: int = 0, arrival_time: float | None = None
    ) -> Placement:
        fut = asyncio.get_running_loop().create_future()
        demand = RequestDemand(request_id=request_id, num_prompt_tokens=int(num_prompt_tokens),
                               priority=int(priority), arrival_time=arrival_time)
        self._pending.append((demand, fut))
        if self._in_flight < self.max_in_flight:
            self._in_flight += 1
            asyncio.ensure_future(self._pump())
        return await fut

    async def _pump(self) -> None:
        try:
            while self._pending:
                batch = self._pending[: self.max_batch]
                del self._pending[: self.max_batch]
                self.num_round_trips += 1
                self.num_dispatches += len(batch)
                try:
                    replies = await call(self._scheduler(), DispatchBatch(requests=[m for m, _ in batch]),
                                         list[Placement])
                except Exception as exc:  # scheduler gone: every waiter learns why
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                for (_, fut), reply in zip(batch, replies):
                    if not fut.done():
                        fut.set_result(reply)
        finally:
            self._in_flight -= 1
