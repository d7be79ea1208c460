"""The frontend puts token messages from two instances (around a live migration) in order, each once."""

from __future__ import annotations

import asyncio

from llumnix_dask.request import Request, SamplingParams
from llumnix_dask.client.errors import RequestFailed
from llumnix_dask.client.frontend import Frontend
from llumnix_dask.client.records import RequestHandle
from llumnix_dask.wire import unpack
from llumnix_dask.wire.frontend_api import TokenMessage
from llumnix_dask.wire.scheduler_api import AbortWhere


def msg(i, ids, inst="a", done=False):
    return TokenMessage("r", inst, i, ids, "".join(f"<{t}>" for t in ids), done, "length" if done else None)


def drain(handle):
    out = []
    while not handle.queue.empty():
        out.append(handle.queue.get_nowait())
    return out


def make():
    fe = Frontend("tcp://127.0.0.1:1")
    handle = RequestHandle(Request.new([1, 2], SamplingParams(max_tokens=5), request_id="r"), asyncio.Queue())
    fe._active["r"] = handle
    return fe, handle


def test_destination_tokens_that_overtake_the_source_wait_their_turn():
    fe, handle = make()
    fe._on_tokens([msg(0, [10]), msg(1, [11])])
    fe._on_tokens([msg(3, [13], inst="b"), msg(4, [14], inst="b", done=True)])  # destination, early
    assert [c.index for c in drain(handle)] == [0, 1]
    fe._on_tokens([msg(2, [12])])  # the source's last token, late
    chunks = drain(handle)
    assert [c.index for c in chunks] == [2, 3, 4] and chunks[-1].finished
    assert handle.token_ids == [10, 11, 12, 13, 14] and handle.instances == ["a", "b"]
    assert fe.completion(handle).text == "<10><11><12><13><14>"
    assert "r" not in fe._active and fe._finished_reports[0].num_migrations == 1


def test_duplicates_are_dropped_and_partial_overlaps_trimmed():
    fe, handle = make()
    fe._on_tokens([msg(0, [10, 11])])
    fe._on_tokens([msg(0, [10, 11]), msg(1, [11, 12], inst="b")])
    assert [t for c in drain(handle) for t in c.token_ids] == [10, 11, 12]


def test_an_instance_error_fails_the_request():
    fe, handle = make()
    fe._on_tokens([TokenMessage("r", "a", 0, error="ValueError: too long")])
    item = handle.queue.get_nowait()
    assert isinstance(item, RequestFailed) and "too long" in str(item)
    fe._on_tokens([msg(0, [10])])  # late tokens of a failed request are ignored
    assert handle.queue.empty()


class _Scheduler:
    def __init__(self):
        self.calls = []

    async def llumnix_abort(self, msg):
        self.calls.append(unpack(AbortWhere, msg))
        return {"status": "OK"}


class _FrontendWithScheduler(Frontend):
    scheduler = None  # a plain attribute here instead of the rpc property


def test_a_second_live_copy_is_stopped_and_its_abort_does_not_end_the_request():
    """A migration whose commit ack was lost leaves the request running on both instances: the source resumed
    its copy (the one the protocol keeps) while the destination had already streamed ahead. The client sees
    every token once, the destination's copy is told to stop, and its closing "abort" message is ignored."""

    async def scenario():
        fe = _FrontendWithScheduler("tcp://127.0.0.1:1")
        handle = RequestHandle(Request.new([1, 2], SamplingParams(max_tokens=5), request_id="r"), asyncio.Queue())
        fe._active["r"] = handle
        fe.server, fe.scheduler = object(), _Scheduler()  # "started"
        fe._on_tokens([msg(0, [10]), msg(1, [11], inst="b"), msg(2, [12], inst="b")])  # migrated to b
        fe._on_tokens([msg(1, [11], inst="a")])  # ... but a resumed its own copy: b's copy is told to stop
        fe._on_tokens([msg(3, [13], inst="b")])  # whatever the stopped copy still sends is ignored
        await asyncio.sleep(0)
        fe._on_tokens([TokenMessage("r", "b", 4, [], "", True, "abort")])
        assert not handle.finished
        fe._on_tokens([msg(2, [12], inst="a"), msg(3, [13], inst="a"), msg(4, [14], inst="a", done=True)])
        return handle, fe.scheduler.calls

    handle, calls = asyncio.run(scenario())
    chunks = drain(handle)
    assert [t for c in chunks for t in c.token_ids] == [10, 11, 12, 13, 14] and chunks[-1].finished
    assert handle.finish_reason == "length" and handle.instances == ["a", "b", "a"]
    assert calls == [AbortWhere(request_id="r", instance_id="b", survivor="a")]


def test_a_late_destination_copy_is_stopped_too():
    """The other order: the source resumed and stays ahead; the destination's copy lags and is stopped."""

    async def scenario():
        fe = _FrontendWithScheduler("tcp://127.0.0.1:1")
        handle = RequestHandle(Request.new([1, 2], SamplingParams(max_tokens=3), request_id="r"), asyncio.Queue())
        fe._active["r"] = handle
        fe.server, fe.scheduler = object(), _Scheduler()
        fe._on_tokens([msg(0, [10]), msg(1, [11])])
        fe._on_tokens([msg(1, [11], inst="b")])  # b never got ahead: all it sends is known
        await asyncio.sleep(0)
        fe._on_tokens([msg(2, [12], inst="a", done=True)])
        return handle, fe.scheduler.calls

    handle, calls = asyncio.run(scenario())
    assert [t for c in drain(handle) for t in c.token_ids] == [10, 11, 12] and handle.finish_reason == "length"
    assert calls == [AbortWhere(request_id="r", instance_id="b", survivor="a")]
