import pytest

from llumnix_dask.config import LatencyModel, MigrationConfig, PolicyConfig
from llumnix_dask.engine.sim import SimEngine
from llumnix_dask.policy.migration import MigrationPair
from llumnix_dask.request import Request, RequestStatus, SamplingParams
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
    model = MigrationModel(LAT, migration, PolicyConfig(), clock.schedule, lambda engine, now: None)
    src, dst = SimEngine("a", num_blocks=100), SimEngine("b", num_blocks=100)
    r = Request.new([1] * prompt, SamplingParams(max_tokens=out, seed=1), request_id="r")
    src.add_request(r)
    src.step()  # prefill: 64 KV tokens + 1 generated token -> 4 blocks
    src.step()  # decode: the 65th token needs a 5th block
    return clock, model, src, dst, r


def test_stages_then_downtime_then_commit():
    clock, model, src, dst, r = setup()
    model.start(MigrationPair("a", "b", {}), src, dst, now=src.now)
    assert dst.num_free_blocks == 95 and src.load().migrating and dst.load().migrating
    t, fn = clock.pop()
    assert t == pytest.approx(src.now + (2 + 5 * 5) / 1000)  # stage 1 copies all 5 blocks
    fn(t)  # nothing new was written: last stage, the request pauses
    assert r.status is RequestStatus.MIGRATING
    t2, commit = clock.pop()
    assert t2 - t == pytest.approx(0.015)  # downtime = commit handshake + 0 blocks
    commit(t2)
    assert r.instance_id == "b" and r.status is RequestStatus.RUNNING and r.num_migrations == 1
    assert src.num_free_blocks == 100 and dst.num_free_blocks == 95
    assert not src.load().migrating and not dst.load().migrating
    assert model.stats.committed == 1 and model.stats.downtime_s == [pytest.approx(0.015)]


def test_request_keeps_decoding_during_a_stage_and_the_increment_is_copied():
    clock, model, src, dst, r = setup(prompt=60, out=200)
    model.start(MigrationPair("a", "b", {}), src, dst, now=src.now)
    before = r.num_output_tokens
    for _ in range(20):  # 20 more tokens on the source while stage 1 copies: crosses a block boundary
        src.step()
    assert r.num_output_tokens == before + 20
    t, fn = clock.pop()
    fn(max(t, src.now))
    t2, commit = clock.pop()
    commit(t2)
    assert len(dst.request_blocks("r")) == -(-(60 + r.num_output_tokens) // 16)
    assert dst.num_free_blocks == 100 - len(dst.request_blocks("r"))


def test_abort_when_the_request_finishes_mid_stage_frees_reserved_blocks():
    clock, model, src, dst, r = setup(prompt=64, out=4)
    model.start(MigrationPair("a", "b", {}), src, dst, now=src.now)
    while src.has_work():
        src.step()
    t, fn = clock.pop()
    fn(t)
    assert model.stats.aborted == 1 and dst.num_free_blocks == 100 and not dst.load().migrating
    assert r.status is RequestStatus.FINISHED and not clock.events


def test_destination_refuses_below_watermark():
    clock, model, src, dst, r = setup(migration=MigrationConfig(dst_watermark_blocks=96))
    model.start(MigrationPair("a", "b", {}), src, dst, now=src.now)
    assert model.stats.refused == 1 and dst.num_free_blocks == 100 and not clock.events
    assert r.instance_id == "a" and r.status is RequestStatus.RUNNING


def test_queued_request_moves_at_once():
    clock, model, _, dst, _ = setup()
    busy = SimEngine("a2", num_blocks=60)
    busy.add_request(Request.new([1] * 900, SamplingParams(max_tokens=5), request_id="only-queued"))
    model.start(MigrationPair("a2", "b", {}), busy, dst, now=0.0)
    assert model.stats.queued_moves == 1 and dst.get_request("only-queued") is not None
    assert not busy.has_work() and not clock.events
