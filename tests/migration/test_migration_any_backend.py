"""The protocol needs nothing but the EngineBackend protocol: it migrates a non-torch-model engine too."""

from __future__ import annotations

from migration_helpers import FAST, run
from fake_engine import FakeEngine

from llumnix_dask.engine.base import EngineBackend
from llumnix_dask.migration import InProcessEndpoint, MigrationDestination, migrate_out
from engine_runner import EngineRunner, RecordedStreams
from llumnix_dask.request import Request, SamplingParams


def _request() -> Request:
    return Request.new(list(range(1, 30)), SamplingParams(max_tokens=80, seed=5), request_id="f1")


def test_fake_backend_migrates_bit_identically_without_leaks():
    alone = FakeEngine("ref")
    ref = _request()
    alone.add_request(ref)
    while alone.has_work():
        alone.step()

    a, b = FakeEngine("a", step_seconds=0.002), FakeEngine("b", step_seconds=0.002)
    assert isinstance(a, EngineBackend)
    streams = RecordedStreams()
    runners = [EngineRunner(a, streams), EngineRunner(b, streams)]
    req = _request()
    runners[0].add(req)
    assert streams.wait_for(lambda: len(streams.tokens("f1")) >= 20, 30)
    result = run(migrate_out(runners[0].migration_engine, "f1", InProcessEndpoint(MigrationDestination(b, FAST)), FAST))
    assert streams.wait_for(lambda: streams.finished("f1"), 30)
    for r in runners:
        r.stop()
    assert result.outcome == "committed" and len(result.stages) >= 2
    assert streams.tokens("f1") == ref.output_token_ids
    assert a.num_free_blocks == a.num_blocks and b.num_free_blocks == b.num_blocks
