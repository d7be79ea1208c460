import pytest

from llumnix_dask.config import MigrationConfig, PolicyConfig
from llumnix_dask.sim_config import LatencyModel
from llumnix_dask.engine.sim import SimEngine
from llumnix_dask.request import Request, RequestStatus, SamplingParams
from llumnix_dask.scheduler.core import GlobalScheduler, PlannedMigration
from llumnix_dask.sim.migration import MigrationModel

LAT = LatencyModel(migration_ms_per_block=5.0, migration_stage_overhead_ms=2.0, migration_commit_ms=15.0)


class Clock:
    """A minimal event queue for driving the migration model by hand."""

    def __init__(self):
        self.events = []

    def schedule(self, t, fn):
        self.events.append((t, fn))

    def pop(self):
        self.events.sort(key=lambda e: e[0])
        return self.events.pop(0)


def setup(prompt=64, out=50, migration=MigrationConfig()):
    clock = Clock()
    gs = GlobalScheduler(PolicyConfig(), clock=lambda: 0.0)
    model = MigrationModel(LAT, migration, gs, clock.schedule, lambda engine, now: None)
    src, dst = SimEngine("a", num_blocks=100), SimEngine("b", num_blocks=100)
    for e in (src, dst):
        gs.register(e.instance_id, f"sim://{e.instance_id}", e.load())
    r = Request.new([1] * prompt, SamplingParams(max_tokens=out, seed=1), request_id="r")
    src.add_request(r)
    src.step()  # prefill
    src.step()  # one decode step
    plan = PlannedMigration(gs.instances["a"], gs.instances["b"], None, "test")
    gs.migration_started(plan)
    return clock, model, src, dst, r, gs, plan


def test_a_short_request_pauses_at_once_and_commits_after_the_downtime():
    clock, model, src, dst, r, gs, plan = setup()  # 65 KV tokens = 5 blocks: at most 16 left, no live stage
    model.start(plan, src, dst, now=src.now)
    assert r.status is RequestStatus.MIGRATING and dst.num_free_blocks == 95
    t, commit = clock.pop()
    assert t - src.now == pytest.approx((15 + 5 * 5) / 1000)  # downtime = commit handshake + 5 blocks
    commit(t)
    assert r.instance_id == "b" and r.status is RequestStatus.RUNNING and r.num_migrations == 1
    assert src.num_free_blocks == 100 and dst.num_free_blocks == 95
    assert model.stats.committed == 1 and gs.migration_log[-1]["ok"] and gs.request_locations["r"] == "b"
    assert not gs.instances["a"].migrating and not gs.instances["b"].migrating


def test_a_long_request_keeps_decoding_during_the_live_stage_then_moves_the_rest_paused():
    clock, model, src, dst, r, gs, plan = setup(prompt=600, out=200)
    model.start(plan, src, dst, now=src.now)
    t, stage_done = clock.pop()
    assert t - src.now == pytest.approx((2 + 37 * 5) / 1000)  # the 37 full blocks of 601 KV tokens, live
    before = r.num_output_tokens
    while src.now < t:
        src.step()  # the request decodes on the source meanwhile
    assert r.num_output_tokens > before and r.status is RequestStatus.RUNNING
    stage_done(src.now)
    assert r.status is RequestStatus.MIGRATING  # few blocks left: the last stage pauses it
    t2, commit = clock.pop()
    commit(t2)
    kv_blocks = -(-(600 + r.num_output_tokens - 1) // 16)
    assert len(dst.request_blocks("r")) == kv_blocks and dst.num_free_blocks == 100 - kv_blocks
    assert src.num_free_blocks == 100 and r.instance_id == "b"


def test_abort_when_the_request_finishes_mid_stage_frees_reserved_blocks():
    clock, model, src, dst, r, gs, plan = setup(prompt=600, out=4)
    model.start(plan, src, dst, now=src.now)
    while src.has_work():
        src.step()
    t, fn = clock.pop()
    fn(t)
    assert model.stats.aborted == 1 and dst.num_free_blocks == 100 and not clock.events
    assert r.status is RequestStatus.FINISHED and not gs.migration_log[-1]["ok"]
    assert not gs.instances["b"].migrating


def test_destination_refuses_below_watermark():
    clock, model, src, dst, r, gs, plan = setup(migration=MigrationConfig(dst_watermark_blocks=96))
    named = PlannedMigration(plan.src, plan.dst, "r", "test")  # named: the source's own choice would skip it
    model.start(named, src, dst, now=src.now)
    assert model.stats.refused == 1 and dst.num_free_blocks == 100 and not clock.events
    assert r.instance_id == "a" and r.status is RequestStatus.RUNNING
    assert gs.num_migrations_failed == 1 and not gs.instances["a"].migrating


def test_the_source_does_not_choose_a_request_the_destinations_watermark_would_refuse():
    clock, model, src, dst, r, gs, plan = setup(migration=MigrationConfig(dst_watermark_blocks=96))
    model.start(plan, src, dst, now=src.now)  # 5 blocks + 96 kept free > 100: nothing eligible, no round trip
    assert model.stats.refused == 0 and dst.num_free_blocks == 100 and not clock.events
    assert r.instance_id == "a" and r.status is RequestStatus.RUNNING and not gs.instances["a"].migrating


def test_queued_request_moves_at_once():
    clock, model, _, dst, _, gs, plan = setup()
    busy = SimEngine("a2", num_blocks=60)
    gs.register("a2", "sim://a2", busy.load())
    busy.add_request(Request.new([1] * 900, SamplingParams(max_tokens=5), request_id="only-queued"))
    model.start(PlannedMigration(gs.instances["a2"], gs.instances["b"], None, "test"), busy, dst, now=0.0)
    assert model.stats.queued_moves == 1 and dst.get_request("only-queued") is not None
    assert not busy.has_work() and not clock.events
