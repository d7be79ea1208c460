"""The engine's migration surface: KV blocks exported from one engine and imported into another (same
weights) let the request decode on to exactly the tokens it would have produced without moving."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from nano_helpers import make_engine, new_request, prompt, run_to_completion

from llumnix_dask.request import RequestStatus

MODES = {"greedy": dict(temperature=0.0), "seeded": dict(temperature=1.5, top_p=0.95, seed=7)}


def never_migrated(model: str, sampling: dict, max_tokens: int = 40) -> list[int]:
    engine = make_engine(model)
    req = new_request(prompt(21, 1), "m", max_tokens=max_tokens, **sampling)
    engine.add_request(req)
    run_to_completion(engine)
    return req.output_token_ids


def migrate(src, dst, rid: str, steps_between_stages: int = 3) -> tuple[list, list]:
    """Multi-stage live migration driven by hand: copy full blocks while decoding goes on, then pause,
    copy the rest and commit. Returns the outputs streamed by the source during the copy."""
    streamed = []
    ids = src.request_blocks(rid)
    full = src.num_kv_tokens(rid) // src.block_size
    stage1 = ids[:full]
    dst_ids = dst.reserve_blocks(len(stage1), watermark=0)
    dst.import_blocks(dst_ids, src.export_blocks(stage1))
    for _ in range(steps_between_stages):  # the request keeps decoding on the source meanwhile
        streamed += src.step()
    state = src.pause(rid)
    assert src.get_request(rid).status is RequestStatus.MIGRATING
    rest = state.block_ids[len(stage1) :]
    more = dst.reserve_blocks(len(rest))
    dst.import_blocks(more, src.export_blocks(rest))
    dst.commit_migrated(state, dst_ids + more)
    src.release(rid)
    return streamed, dst_ids + more


@pytest.mark.parametrize("mode", list(MODES))
def test_migrated_request_decodes_on_to_the_same_tokens(small_model, mode):
    expected = never_migrated(small_model, MODES[mode])
    src = make_engine(small_model, "src", block_size=4)
    dst = make_engine(small_model, "dst", block_size=4)
    # Other traffic on both sides, so the batches differ before and after the move.
    src.add_request(new_request(prompt(9, 5), "other-src", max_tokens=60))
    dst.add_request(new_request(prompt(30, 6), "other-dst", max_tokens=60))
    req = new_request(prompt(21, 1), "m", max_tokens=40, **MODES[mode])
    src.add_request(req)
    outs = []
    for _ in range(10):
        outs += src.step()
        dst.step()
    streamed, _ = migrate(src, dst, "m")
    outs += streamed
    assert src.get_request("m") is None
    assert src.blocks.num_used == len(src.request_blocks("other-src"))  # the moved request's blocks are freed
    moved = dst.get_request("m")
    assert moved.num_migrations == 1 and moved.instance_id == "dst"
    outs += run_to_completion(dst).get("m", [])
    tokens = [t for o in outs if o.request_id == "m" for t in o.new_token_ids]
    assert tokens == expected == moved.output_token_ids
    # The text stream continues without a gap or a repeat across the move.
    assert "".join(o.text_delta for o in outs if o.request_id == "m") == dst.decode(expected)
    run_to_completion(src)
    assert src.blocks.num_used == 0 and dst.blocks.num_used == 0


def test_migration_in_the_middle_of_a_chunked_prefill(small_model):
    expected = never_migrated(small_model, MODES["greedy"], max_tokens=8)
    src = make_engine(small_model, "src", block_size=4, max_batched_tokens=8)
    dst = make_engine(small_model, "dst", block_size=4)
    src.add_request(new_request(prompt(21, 1), "m", max_tokens=8))
    src.step()  # 8 of 21 prompt tokens
    assert src.num_kv_tokens("m") == 8 and src.get_request("m").num_output_tokens == 0
    state = src.pause("m")
    ids = dst.reserve_blocks(len(state.block_ids))
    dst.import_blocks(ids, src.export_blocks(state.block_ids))
    dst.commit_migrated(state, ids)
    src.release("m")
    outs = run_to_completion(dst).get("m", [])
    assert dst.get_request("m") is None  # finished
    assert state.num_kv_tokens == 8
    # The rest of the prompt is prefilled on the destination, and the output is the unmigrated one.
    assert [t for o in outs for t in o.new_token_ids] == expected


def test_export_layout_and_import_round_trip(small_model):
    src = make_engine(small_model, "src")
    src.add_request(new_request(prompt(40, 2), "e", max_tokens=2))
    src.step()
    ids = src.request_blocks("e")
    buf = src.export_blocks(ids)
    a = src.model_args
    assert buf.shape == (a.num_layers, 2, len(ids), src.block_size, a.num_kv_heads, a.head_dim)
    assert buf.is_contiguous() and buf.abs().sum() > 0
    assert not buf.is_inference()  # transports may reuse it as a staging buffer
    buf.add_(0)
    dst = make_engine(small_model, "dst")
    dst.reserve_blocks(5)  # the destination's ids differ from the source's
    got = dst.reserve_blocks(len(ids))
    dst.import_blocks(got, buf)
    assert torch.equal(dst.export_blocks(got), buf)


def test_failed_migration_resumes_on_the_source(small_model):
    expected = never_migrated(small_model, MODES["seeded"])
    src = make_engine(small_model, "src")
    req = new_request(prompt(21, 1), "m", max_tokens=40, **MODES["seeded"])
    src.add_request(req)
    for _ in range(5):
        src.step()
    src.pause("m")
    assert src.step() == [] and not src.has_work()  # paused: out of the batch
    assert src.load().migrating and src.load().running[0].migrating
    dst = make_engine(small_model, "dst")
    ids = dst.reserve_blocks(3)
    dst.free_blocks(ids)  # destination aborts: everything it reserved is returned
    assert dst.blocks.num_used == 0
    src.resume("m")
    run_to_completion(src)
    assert req.output_token_ids == expected and req.status is RequestStatus.FINISHED


def test_reserve_refuses_below_the_watermark(small_model):
    dst = make_engine(small_model, num_blocks=20)
    assert dst.reserve_blocks(15, watermark=6) is None and dst.blocks.num_used == 0
    ids = dst.reserve_blocks(14, watermark=6)
    assert len(ids) == 14 and dst.load().used_blocks == 14 and dst.load().migrating
    assert dst.reserve_blocks(7) is None


def test_take_waiting_moves_a_queued_request(small_model):
    src = make_engine(small_model, "src", max_batch_size=1)
    dst = make_engine(small_model, "dst")
    src.add_request(new_request(prompt(8, 1), "first", max_tokens=3))
    queued = new_request(prompt(8, 2), "second", arrival=1.0, max_tokens=3)
    src.add_request(queued)
    src.step()
    with pytest.raises(KeyError):
        src.take_waiting("first")  # running, not queued
    moved = src.take_waiting("second")
    assert moved is queued and src.get_request("second") is None
    dst.add_request(moved)
    run_to_completion(dst)
    assert moved.num_output_tokens == 3 and moved.instance_id == "dst"


def test_export_while_the_step_loop_runs_in_another_thread(small_model):
    """Migration calls from another thread interleave with a running step loop without corrupting it."""
    expected = never_migrated(small_model, MODES["greedy"], max_tokens=60)
    engine = make_engine(small_model, block_size=4)
    req = new_request(prompt(21, 1), "m", max_tokens=60)
    engine.add_request(req)
    errors = []

    def loop():
        try:
            while engine.has_work():
                engine.step()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=loop)
    t.start()
    exports = 0
    deadline = time.monotonic() + 60
    while t.is_alive() and time.monotonic() < deadline:
        try:
            ids = engine.request_blocks("m")
        except KeyError:  # finished meanwhile
            break
        engine.export_blocks(ids)
        engine.load()
        exports += 1
    t.join(timeout=60)
    assert not errors and not t.is_alive()
    assert exports > 0 and req.output_token_ids == expected


def test_a_paused_requests_blocks_export_without_waiting_for_the_step_in_flight(small_model, mode="greedy"):
    # The last stage's copy is the migration's downtime: it must not wait behind the source's next step
    # (a long prefill there would stretch it). The engine lock stands for a step in flight.
    src, dst = make_engine(small_model, "src"), make_engine(small_model, "dst")
    req = new_request(prompt(21, 1), "m", max_tokens=40, **MODES[mode])
    src.add_request(req)
    for _ in range(8):
        src.step()
    state = src.pause("m")
    exported = []
    with src._lock:  # a step holds this while it runs
        worker = threading.Thread(target=lambda: exported.append(src.export_blocks(state.block_ids)), daemon=True)
        worker.start()
        worker.join(30)
        assert exported, "export waited for the step in flight"
    ids = dst.reserve_blocks(len(state.block_ids))
    dst.import_blocks(ids, exported[0])
    dst.commit_migrated(state, ids)
    src.release("m")
    run_to_completion(dst)
    assert dst.get_request("m") is None
    assert state.request.output_token_ids == never_migrated(small_model, MODES[mode])


def test_migration_surface_errors(small_model):
    engine = make_engine(small_model)
    with pytest.raises(KeyError):
        engine.request_blocks("ghost")
    with pytest.raises(KeyError):
        engine.pause("ghost")
    with pytest.raises(KeyError):
        engine.resume("ghost")
    with pytest.raises(ValueError, match="not reserved"):
        engine.import_blocks([0], engine.export_blocks([0]))
    ids = engine.reserve_blocks(2)
    with pytest.raises(ValueError, match="shape"):
        engine.import_blocks(ids, engine.export_blocks([0]))


def test_live_migration_while_the_source_step_loop_keeps_running(small_model):
    """The migration calls come from another thread while the source decodes in its own step loop."""
    expected = never_migrated(small_model, MODES["seeded"], max_tokens=80)
    src = make_engine(small_model, "src", block_size=4)
    dst = make_engine(small_model, "dst", block_size=4)
    req = new_request(prompt(21, 1), "m", max_tokens=80, **MODES["seeded"])
    src.add_request(req)
    stop = threading.Event()

    def step_loop():
        while not stop.is_set():
            src.step()

    t = threading.Thread(target=step_loop)
    t.start()
    try:
        deadline = time.monotonic() + 60
        while req.num_output_tokens < 10 and time.monotonic() < deadline:
            time.sleep(0.001)
        sent: list[int] = []
        for _ in range(3):  # stages: copy what is full now, while the request keeps decoding
            full = src.num_kv_tokens("m") // src.block_size
            ids = src.request_blocks("m")[len(sent) : full]
            got = dst.reserve_blocks(len(ids))
            dst.import_blocks(got, src.export_blocks(ids))
            sent += got
        state = src.pause("m")
        rest = state.block_ids[len(sent) :]
        got = dst.reserve_blocks(len(rest))
        dst.import_blocks(got, src.export_blocks(rest))
        dst.commit_migrated(state, sent + got)
        src.release("m")
    finally:
        stop.set()
        t.join(timeout=60)
    assert state.request.num_output_tokens < 80  # it really moved mid-way
    run_to_completion(dst)
    assert dst_tokens(dst, state) == expected


def dst_tokens(dst, state) -> list[int]:
    req = state.request  # the destination adopted this copy of the request
    assert req.status is RequestStatus.FINISHED and req.instance_id == dst.instance_id
    return req.output_token_ids
