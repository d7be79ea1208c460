"""Every way a migration can fail leaves exactly one live copy of the request and frees every block.

The source engine is stepped by the test itself, inside protocol hooks, so each fault lands at an
exact point of the protocol (between stages, during the pause, around the commit).
"""

from __future__ import annotations

import dataclasses

import pytest
from migration_helpers import ENGINE, FAST, ScriptedEndpoint, forever, free_blocks, make_request, run

from llumnix_dask.migration import MigrationDestination, UnknownMigration, migrate_out
from llumnix_dask.request import RequestStatus


def step_until(engine, predicate, limit=500):
    for _ in range(limit):
        if predicate():
            return
        engine.step()
    raise AssertionError("condition not reached")


def running_on(engine, n_tokens, req):
    engine.add_request(req)
    step_until(engine, lambda: req.num_output_tokens >= n_tokens)


def finish(engine, req):
    step_until(engine, lambda: engine.get_request(req.request_id) is None)
    return req.output_token_ids


@pytest.fixture
def engines(make_engine):
    a, b = make_engine("a"), make_engine("b")
    return a, b, free_blocks(a), free_blocks(b)


def test_destination_without_room_refuses_and_source_keeps_decoding(make_engine, reference):
    a = make_engine("a")
    b = make_engine("b", dataclasses.replace(ENGINE, num_blocks=8))
    config = dataclasses.replace(FAST, dst_watermark_blocks=8)  # any first stage (>= 1 full block) + 8 free > 8
    dst = MigrationDestination(b, config)
    req = make_request(0)
    running_on(a, 5, req)
    result = run(migrate_out(a, req.request_id, ScriptedEndpoint(dst), config))
    assert result.outcome == "refused" and not result.ok
    assert req.status is RequestStatus.RUNNING and b.get_request(req.request_id) is None
    assert finish(a, req) == reference(req)
    assert free_blocks(b) == 8 and dst.reserved_blocks == 0


def test_destination_running_out_of_blocks_at_a_later_stage_aborts(engines, reference):
    a, b, free_a, free_b = engines
    dst = MigrationDestination(b, FAST)
    req = make_request(1)
    running_on(a, 2, req)
    hog = []

    def fill_destination_and_decode(n):
        if n == 0:
            hog.extend(b.reserve_blocks(free_blocks(b)))  # another migration took every free block
            step_until(a, lambda: req.num_output_tokens >= 20)

    ep = ScriptedEndpoint(dst, {"after_send_blocks": fill_destination_and_decode})
    result = run(migrate_out(a, req.request_id, ep, FAST))
    assert result.outcome == "aborted:dst-out-of-blocks"
    assert req.status is RequestStatus.RUNNING  # resumed if it had been paused
    b.free_blocks(hog)
    assert free_blocks(b) == free_b and dst.reserved_blocks == 0
    assert finish(a, req) == reference(req)
    assert free_blocks(a) == free_a


def test_request_finishing_mid_migration_aborts_and_destination_frees(engines, reference):
    a, b, free_a, free_b = engines
    dst = MigrationDestination(b, FAST)
    req = make_request(2)
    running_on(a, 3, req)
    ep = ScriptedEndpoint(dst, {"after_send_blocks": lambda n: n == 0 and finish(a, req)})
    result = run(migrate_out(a, req.request_id, ep, FAST))
    assert result.outcome == "aborted:finished"
    assert req.output_token_ids == reference(req)
    assert free_blocks(b) == free_b and dst.reserved_blocks == 0 and not dst.active_migrations
    assert free_blocks(a) == free_a


def test_request_aborted_by_its_client_mid_migration(engines):
    a, b, free_a, free_b = engines
    dst = MigrationDestination(b, FAST)
    req = make_request(3)
    running_on(a, 3, req)
    ep = ScriptedEndpoint(dst, {"after_send_blocks": lambda n: n == 0 and a.abort(req.request_id)})
    result = run(migrate_out(a, req.request_id, ep, FAST))
    assert result.outcome == "aborted:aborted"
    assert free_blocks(b) == free_b and free_blocks(a) == free_a
    assert b.get_request(req.request_id) is None


def test_request_aborted_during_the_commit_is_dropped_on_the_destination_too(engines):
    a, b, free_a, free_b = engines
    dst = MigrationDestination(b, FAST)
    req = make_request(4)
    running_on(a, 3, req)
    ep = ScriptedEndpoint(dst, {"before_commit": lambda n: a.abort(req.request_id)})
    result = run(migrate_out(a, req.request_id, ep, FAST))
    assert result.outcome == "aborted:aborted"
    assert b.get_request(req.request_id) is None and a.get_request(req.request_id) is None
    assert free_blocks(b) == free_b and free_blocks(a) == free_a


def test_request_preempted_mid_migration_aborts(engines):
    a, b, free_a, free_b = engines
    dst = MigrationDestination(b, FAST)
    req = make_request(5)
    running_on(a, 3, req)
    hog = []

    def preempt(n):
        if n == 0:
            hog.extend(a.reserve_blocks(free_blocks(a)))  # a's cache is full: its next block preempts
            step_until(a, lambda: req.status is RequestStatus.WAITING)

    result = run(migrate_out(a, req.request_id, ScriptedEndpoint(dst, {"after_send_blocks": preempt}), FAST))
    assert result.outcome == "aborted:preempted"
    assert req.num_preemptions == 1
    assert free_blocks(b) == free_b and dst.reserved_blocks == 0
    a.free_blocks(hog)
    finish(a, req)  # recomputed and finished on the source
    assert req.num_output_tokens == req.sampling.max_tokens and free_blocks(a) == free_a


def test_silent_destination_times_out_and_the_paused_request_resumes(engines, reference):
    a, b, free_a, free_b = engines
    config = dataclasses.replace(FAST, stage_timeout_s=0.3)
    dst = MigrationDestination(b, config)
    req = make_request(6)
    running_on(a, 3, req)
    ep = ScriptedEndpoint(dst, {"before_commit": lambda n: forever()})
    result = run(migrate_out(a, req.request_id, ep, config))
    assert result.outcome == "aborted:dst-timeout"
    assert req.status is RequestStatus.RUNNING
    assert ep.calls.get("abort") == 1 and free_blocks(b) == free_b  # told to free, and it did
    assert finish(a, req) == reference(req)
    assert free_blocks(a) == free_a


def test_dead_destination_source_resumes_and_destination_frees_after_its_timeout(engines, reference):
    a, b, free_a, free_b = engines
    now = [0.0]
    dst = MigrationDestination(b, FAST, clock=lambda: now[0])

    def dead(n):
        raise ConnectionResetError("destination worker died")

    req = make_request(7)
    running_on(a, 3, req)
    ep = ScriptedEndpoint(dst, {"before_commit": dead, "before_abort": dead})
    result = run(migrate_out(a, req.request_id, ep, FAST))
    assert result.outcome == "aborted:dst-error:commit:ConnectionResetError"
    assert req.status is RequestStatus.RUNNING
    assert finish(a, req) == reference(req) and free_blocks(a) == free_a
    # The destination never heard the abort; it holds the blocks until the source has been silent long enough.
    assert dst.reserved_blocks > 0
    now[0] += FAST.dst_timeout_s
    assert len(dst.expire_silent()) == 1
    assert free_blocks(b) == free_b


def test_lost_commit_ack_leaves_exactly_one_copy(engines, reference):
    a, b, free_a, free_b = engines
    dst = MigrationDestination(b, FAST)

    def ack_lost(n):
        raise ConnectionResetError("connection dropped before the commit ack")

    req = make_request(8)
    running_on(a, 3, req)
    result = run(migrate_out(a, req.request_id, ScriptedEndpoint(dst, {"after_commit": ack_lost}), FAST))
    assert result.outcome.startswith("aborted:dst-error:commit")
    assert b.get_request(req.request_id) is None  # the committed copy was dropped again
    assert free_blocks(b) == free_b
    assert finish(a, req) == reference(req) and free_blocks(a) == free_a


def test_silent_source_destination_frees_pre_allocation_after_timeout(make_engine):
    b = make_engine("b")
    free_b = free_blocks(b)
    now = [100.0]
    dst = MigrationDestination(b, FAST, clock=lambda: now[0])
    assert dst.reserve("m1", "r", 3)
    now[0] += FAST.dst_timeout_s * 0.9
    assert dst.expire_silent() == [] and dst.reserved_blocks == 3
    assert dst.reserve("m1", "r", 2)  # the source is alive: the deadline moves
    now[0] += FAST.dst_timeout_s * 0.9
    assert dst.expire_silent() == []
    now[0] += FAST.dst_timeout_s * 0.2
    assert dst.expire_silent() == ["m1"]
    assert free_blocks(b) == free_b and dst.reserved_blocks == 0
    with pytest.raises(UnknownMigration):
        dst.reserve("m1", "r", 1)  # a late stage cannot reopen it
    with pytest.raises(UnknownMigration):
        dst.receive_blocks("m1", 0, [1], [b.export_blocks([0])])


def test_reaper_thread_frees_a_dead_sources_blocks(make_engine):
    b = make_engine("b")
    free_b = free_blocks(b)
    dst = MigrationDestination(b, dataclasses.replace(FAST, dst_timeout_s=0.2))
    dst.start_reaper(interval_s=0.02)
    try:
        assert dst.reserve("m2", "r", 4) and free_blocks(b) == free_b - 4
        import time

        deadline = time.monotonic() + 10
        while dst.reserved_blocks and time.monotonic() < deadline:
            time.sleep(0.01)  # polling a condition with a deadline
        assert dst.reserved_blocks == 0 and free_blocks(b) == free_b
    finally:
        dst.close()


def test_queued_request_joins_destination_queue_in_arrival_order(make_engine, reference):
    one_at_a_time = dataclasses.replace(ENGINE, max_batch_size=1)
    a, b = make_engine("a", one_at_a_time), make_engine("b", one_at_a_time)
    early, mid, late = (make_request(20 + i, max_tokens=8) for i in range(3))
    early.arrival_time, mid.arrival_time, late.arrival_time = 1.0, 2.0, 3.0
    a.add_request(mid)  # a never steps: mid is still queued
    b.add_request(early)
    b.add_request(late)
    result = run(migrate_out(a, mid.request_id, ScriptedEndpoint(MigrationDestination(b, FAST)), FAST))
    assert result.outcome == "committed" and result.queued and result.stages == []
    assert a.get_request(mid.request_id) is None and not a.has_work()
    first_token_order = []
    while b.has_work():
        for out in b.step():
            if out.request_id not in first_token_order:
                first_token_order.append(out.request_id)
    assert first_token_order == [early.request_id, mid.request_id, late.request_id]
    assert b.get_request(mid.request_id) is None and free_blocks(b) == ENGINE.num_blocks


def test_queued_request_the_destination_cannot_serve_stays_queued_on_the_source(make_engine):
    a = make_engine("a")
    # A 32-token context: a 40-token prompt never fits, whatever the backend's block size.
    b = make_engine("b", dataclasses.replace(ENGINE, num_blocks=2, max_model_len=32))
    req = make_request(30)
    a.add_request(req)
    result = run(migrate_out(a, req.request_id, ScriptedEndpoint(MigrationDestination(b, FAST)), FAST))
    assert result.outcome == "refused"
    assert a.get_request(req.request_id) is req and req.status is RequestStatus.WAITING


def test_unknown_request_is_reported_not_raised(engines):
    a, b, *_ = engines
    result = run(migrate_out(a, "nope", ScriptedEndpoint(MigrationDestination(b, FAST)), FAST))
    assert result.outcome == "aborted:not-found"
