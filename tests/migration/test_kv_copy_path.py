"""Every KV block a migration moves is gathered and scattered by the shared kernels of
``llumnix_dask.engine.kv_copy`` (Triton on CUDA, torch elsewhere), whatever the backend: no engine copies
blocks on its own."""

from __future__ import annotations

from migration_helpers import FAST, make_request, run

from engine_runner import EngineRunner, RecordedStreams
from llumnix_dask.engine import kv_copy
from llumnix_dask.migration import InProcessEndpoint, MigrationDestination, migrate_out


def test_a_migration_copies_every_block_through_the_shared_kernels(make_engine, reference, monkeypatch):
    copied = {"gather": 0, "scatter": 0}
    gather, scatter = kv_copy.gather_blocks, kv_copy.scatter_blocks

    def counting_gather(cache, block_ids, **kw):
        copied["gather"] += len(block_ids)
        return gather(cache, block_ids, **kw)

    def counting_scatter(cache, block_ids, buffer, **kw):
        copied["scatter"] += len(block_ids)
        return scatter(cache, block_ids, buffer, **kw)

    monkeypatch.setattr(kv_copy, "gather_blocks", counting_gather)
    monkeypatch.setattr(kv_copy, "scatter_blocks", counting_scatter)
    a, b = make_engine("a"), make_engine("b")
    streams = RecordedStreams()
    runners = [EngineRunner(a, streams), EngineRunner(b, streams)]
    req = make_request(0, max_tokens=100)
    runners[0].add(req)
    assert streams.wait_for(lambda: len(streams.tokens(req.request_id)) >= 40, 60)
    result = run(migrate_out(runners[0].migration_engine, req.request_id,
                             InProcessEndpoint(MigrationDestination(b, FAST)), FAST))
    assert streams.wait_for(lambda: streams.finished(req.request_id), 60)
    for r in runners:
        r.stop()
    assert result.outcome == "committed" and result.blocks > 0
    assert streams.tokens(req.request_id) == reference(req)
    # Every moved block went through both kernels (vLLM calls them once per layer tensor; the source may also
    # gather a block to size its messages).
    assert copied["gather"] >= result.blocks and copied["scatter"] >= result.blocks, (copied, result.blocks)
    assert copied["scatter"] % result.blocks == 0
