"""Adaptive dispatch batching: a lone dispatch travels alone, a burst shares round trips."""

from __future__ import annotations

import asyncio

import pytest

from llumnix_dask.client.dispatch import DispatchClient
from llumnix_dask.wire import pack, unpack
from llumnix_dask.wire.scheduler_api import DispatchBatch, Placement


class FakeScheduler:
    def __init__(self, fail: bool = False):
        self.batches: list[int] = []
        self.fail = fail

    async def llumnix_dispatch_batch(self, msg):
        requests = unpack(DispatchBatch, msg).requests
        self.batches.append(len(requests))
        await asyncio.sleep(0.01)  # a round trip
        if self.fail:
            raise OSError("scheduler unreachable")
        return pack([Placement(instance_id=f"i-{r.request_id}") for r in requests])


def test_a_burst_shares_round_trips_and_each_caller_gets_its_own_reply():
    sched = FakeScheduler()

    async def main():
        client = DispatchClient(lambda: sched, max_in_flight=2)
        alone = await client.place("solo", 10)
        burst = await asyncio.gather(*(client.place(f"r{i}", 10) for i in range(50)))
        return alone, burst

    alone, burst = asyncio.run(main())
    assert alone.instance_id == "i-solo" and sched.batches[0] == 1
    assert [b.instance_id for b in burst] == [f"i-r{i}" for i in range(50)]
    assert len(sched.batches) - 1 < 50 and sum(sched.batches) == 51


def test_a_failed_round_trip_fails_every_waiter():
    async def main():
        client = DispatchClient(lambda: FakeScheduler(fail=True))
        return await asyncio.gather(*(client.place(f"r{i}", 1) for i in range(3)), return_exceptions=True)

    assert all(isinstance(r, OSError) for r in asyncio.run(main()))


def test_the_client_recovers_after_a_failure():
    sched = FakeScheduler(fail=True)

    async def main():
        client = DispatchClient(lambda: sched)
        with pytest.raises(OSError):
            await client.place("a", 1)
        sched.fail = False
        return await client.place("b", 1)

    assert asyncio.run(main()).instance_id == "i-b"
