"""vLLM-only migration behaviour: prefix caching on both sides, and the checks that refuse a mismatched commit."""

from __future__ import annotations

import dataclasses

import pytest
from migration_helpers import ENGINE, FAST, engine_config, free_blocks, make_request, run

from llumnix_dask.engine import create_engine
from llumnix_dask.engine.base import MigrationState
from llumnix_dask.migration import InProcessEndpoint, MigrationDestination, migrate_out
from llumnix_dask.request import Request

pytestmark = [pytest.mark.vllm, pytest.mark.parametrize("backend", ["vllm"], indirect=True)]


@pytest.fixture
def pair():
    config = engine_config("vllm", ENGINE)
    cached = dataclasses.replace(config, vllm_args={**config.vllm_args, "enable_prefix_caching": True})
    engines = [create_engine(cached, "a"), create_engine(cached, "b")]
    yield engines
    for e in engines:
        e.close()


def step_until(engine, predicate, limit=1000):
    for _ in range(limit):
        if predicate():
            return
        engine.step()
    raise AssertionError("condition not reached")


def test_prefix_caching_on_both_sides_keeps_tokens_and_reuses_migrated_blocks(pair, reference):
    a, b = pair
    req = make_request(60, seeded=True, max_tokens=90)
    expected = reference(req)
    a.add_request(req)
    step_until(a, lambda: req.num_output_tokens >= 30)
    result = run(migrate_out(a, req.request_id, InProcessEndpoint(MigrationDestination(b, FAST)), FAST))
    assert result.outcome == "committed"
    moved = b.get_request(req.request_id)
    step_until(b, lambda: moved.num_output_tokens >= 60)
    back = run(migrate_out(b, req.request_id, InProcessEndpoint(MigrationDestination(a, FAST)), FAST))
    assert back.outcome == "committed"
    home = a.get_request(req.request_id)
    # A second request with the same prompt on b hits the prefix cache of the blocks that migrated in.
    twin = Request.new(list(req.prompt_token_ids), dataclasses.replace(req.sampling, max_tokens=5))
    b.add_request(twin)
    step_until(b, lambda: not b.has_work())
    hits = b.scheduler.kv_cache_manager.block_pool.cached_block_hash_to_block
    assert len(hits) > 0
    step_until(a, lambda: not a.has_work())
    assert home.output_token_ids == expected
    assert free_blocks(a) == free_blocks(b) == ENGINE.num_blocks


def test_a_commit_that_does_not_match_the_reserved_blocks_is_refused(pair, backend):
    a, b = pair
    ids = b.reserve_blocks(2)
    req = make_request(61, prompt_len=120)
    with pytest.raises(ValueError, match="blocks"):
        b.commit_migrated(MigrationState(req, num_kv_tokens=110, block_ids=ids), ids)  # 110 tokens need 4 blocks
    with pytest.raises(ValueError, match="not reserved"):
        b.commit_migrated(MigrationState(req, num_kv_tokens=10, block_ids=[1]), [max(ids) + 1])
    b.free_blocks(ids)
    assert free_blocks(b) == ENGINE.num_blocks and b.get_request(req.request_id) is None
