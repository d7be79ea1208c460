"""The frontend puts token messages from two instances (around a live migration) in order, each once."""

from __future__ import annotations

import asyncio

from llumnix_dask.request import Request, SamplingParams
from llumnix_dask.serve.frontend import Frontend, RequestFailed, RequestHandle


def msg(i, ids, inst="a", done=False):
    return {"rid": "r", "i": i, "ids": ids, "text": "".join(f"<{t}>" for t in ids), "done": done,
            "reason": "length" if done else None, "inst": inst}


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
    assert "r" not in fe._active and fe._finished_reports[0]["num_migrations"] == 1


def test_duplicates_are_dropped_and_partial_overlaps_trimmed():
    fe, handle = make()
    fe._on_tokens([msg(0, [10, 11])])
    fe._on_tokens([msg(0, [10, 11]), msg(1, [11, 12], inst="b")])
    assert [t for c in drain(handle) for t in c.token_ids] == [10, 11, 12]


def test_an_instance_error_fails_the_request():
    fe, handle = make()
    fe._on_tokens([{"rid": "r", "error": "ValueError: too long", "inst": "a"}])
    item = handle.queue.get_nowait()
    assert isinstance(item, RequestFailed) and "too long" in str(item)
    fe._on_tokens([msg(0, [10])])  # late tokens of a failed request are ignored
    assert handle.queue.empty()
