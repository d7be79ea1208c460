"""The llumlet's step thread, token messages and load reports, with a fake engine (no Dask)."""

from __future__ import annotations

import asyncio
import time

import pytest
from toy_engine import FakeEngine

from llumnix_dask.engine.base import MigrationState
from llumnix_dask.request import Request, SamplingParams
from llumnix_dask.workers.llumlet import FRONTEND_KEY, Llumlet
from llumnix_dask.wire.frontend_api import TokenMessage
from llumnix_dask.workers.plugin import pin_gpu


async def run_llumlet(engine, body, **kw):
    loop = asyncio.get_running_loop()
    sent: list[tuple[str, TokenMessage]] = []
    loads = []
    llumlet = Llumlet(
        engine,
        loop=loop,
        send_tokens=lambda by: sent.extend((f, m) for f, msgs in by.items() for m in msgs),
        report_load=loads.append,
        **kw,
    )
    llumlet.start()
    try:
        await body(llumlet, sent, loads)
    finally:
        llumlet.stop()


async def until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def test_tokens_stream_in_order_with_indices_and_a_final_message():
    async def body(llumlet, sent, loads):
        llumlet.add_request(Request.new([1, 2], SamplingParams(max_tokens=5), request_id="r"), "tcp://fe:1")
        await until(lambda: any(m.finished for _, m in sent))
        msgs = [m for f, m in sent if f == "tcp://fe:1"]
        assert [m.index for m in msgs] == [0, 1, 2, 3, 4]
        assert [m.token_ids[0] for m in msgs] == [(3 + 7 * k) % 1000 for k in range(5)]
        assert msgs[-1].finish_reason == "length" and msgs[-1].instance_id == "i0"
        await until(lambda: loads and loads[-1].num_requests == 0)  # idle is reported at once

    asyncio.run(run_llumlet(FakeEngine("i0"), body))


def test_a_request_the_engine_rejects_gets_an_error_message():
    async def body(llumlet, sent, loads):
        llumlet.add_request(Request.new([1] * 2000, SamplingParams(max_tokens=5), request_id="big"), "tcp://fe:1")
        await until(lambda: sent)
        assert sent[0][1].request_id == "big" and "longer than 1000" in sent[0][1].error

    asyncio.run(run_llumlet(FakeEngine("i0"), body))


def test_abort_stops_the_request_and_tells_the_frontend():
    async def body(llumlet, sent, loads):
        llumlet.add_request(Request.new([1], SamplingParams(max_tokens=10_000), request_id="r"), "tcp://fe:1")
        await until(lambda: len(sent) >= 3)
        llumlet.abort("r")
        await until(lambda: sent[-1][1].finish_reason == "abort")
        assert not llumlet.engine.has_work()

    asyncio.run(run_llumlet(FakeEngine("i0", step_s=0.005), body))


def test_an_adopted_migrated_request_continues_its_stream_at_the_next_index():
    async def body(llumlet, sent, loads):
        req = Request.new([1, 2], SamplingParams(max_tokens=6), request_id="m")
        for k in range(4):  # four tokens were produced on the source
            req.append_token((3 + 7 * k) % 1000, 0.0)
        req.metadata[FRONTEND_KEY] = "tcp://fe:2"
        llumlet.adopt_migrated(MigrationState(req, num_kv_tokens=5, block_ids=[]))
        llumlet.engine.add_request(req)
        llumlet.wake()
        await until(lambda: any(m.finished for _, m in sent))
        assert [(f, m.index) for f, m in sent] == [("tcp://fe:2", 4), ("tcp://fe:2", 5)]

    asyncio.run(run_llumlet(FakeEngine("i0"), body))


def test_load_reports_are_rate_limited():
    async def body(llumlet, sent, loads):
        llumlet.add_request(Request.new([1], SamplingParams(max_tokens=100), request_id="r"), None)
        await until(lambda: llumlet.num_steps >= 100 and not llumlet.engine.has_work())
        assert llumlet.num_steps == 100
        assert 1 <= len(loads) < 50

    asyncio.run(run_llumlet(FakeEngine("i0", step_s=0.001), body, load_report_interval_s=0.02))


@pytest.mark.parametrize(
    "name,count,env,expected", [(0, 0, None, None), (3, 2, None, "1"), ("w", 0, None, None), (5, 4, "2", "2")]
)
def test_gpu_pinning_one_instance_per_gpu(monkeypatch, name, count, env, expected):
    if env is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", env)
    assert pin_gpu(name, count) == expected
