"""A cluster of latency-model (sim) instances: the same API, policies and migration, no tensors."""

from __future__ import annotations

import pytest

from llumnix_dask import Cluster, EngineConfig, PolicyConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def cluster():
    engine = EngineConfig(backend="sim", num_blocks=128)
    with Cluster(2, engine=engine, policy=PolicyConfig(migration_enabled=False), dashboard_address=None) as c:
        yield c


def test_sim_instances_generate_text_and_stream_every_token(cluster):
    result = cluster.generate("hello there", max_tokens=12, details=True)
    assert len(result.token_ids) == 12 and result.finish_reason == "length"
    chunks = list(cluster.stream("hello there", max_tokens=7, details=True))
    assert [c.index for c in chunks] == list(range(7))
    df = cluster.instances()
    assert len(df) == 2 and int(df["total_blocks"].iloc[0]) == 128


def test_sim_request_keeps_its_tokens_across_a_forced_migration(cluster):
    # Sim tokens are a function of (seed, position), so the stream must be the same with or without a move.
    reference = cluster.generate("migrate me", max_tokens=60, seed=7, details=True)
    chunks, result = [], None
    for chunk in cluster.stream("migrate me", max_tokens=60, seed=7, details=True):
        chunks.append(chunk)
        if len(chunks) == 5:
            result = cluster.migrate(chunk.request_id)
    assert result["ok"], repr(result)
    assert [t for c in chunks for t in c.token_ids] == reference.token_ids
    assert len({c.instance_id for c in chunks}) == 2


def test_engine_workers_keep_freed_kv_buffers_in_their_heaps(cluster):
    # Set before the worker processes start (glibc reads it then); without it KV transfers page-fault.
    import os

    from llumnix_dask.config import WORKER_PRE_SPAWN_ENV

    envs = cluster.client.run(lambda: {k: os.environ.get(k) for k in WORKER_PRE_SPAWN_ENV})
    assert len(envs) == 2
    for env in envs.values():
        assert env == {k: str(v) for k, v in WORKER_PRE_SPAWN_ENV.items()}
