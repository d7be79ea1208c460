"""Security defaults: every listening socket of an embedded cluster is on localhost, and the whole cluster
(scheduler, workers, frontend token streams, KV migration) runs over TLS when asked to."""

from __future__ import annotations

import pytest

from llumnix_dask import Cluster, EngineConfig, ServeConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def test_the_embedded_cluster_and_the_server_listen_on_localhost_by_default():
    with Cluster(1, engine=EngineConfig(num_blocks=64), dashboard_address=":0") as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        assert "//127.0.0.1:" in cluster.dashboard_link
        assert all(a.startswith("tcp://127.0.0.1:") for a in cluster.instances()["address"])
        assert cluster.frontend.address.startswith("tcp://127.0.0.1:")
    assert ServeConfig().host == "127.0.0.1"


def test_a_cluster_runs_entirely_over_tls():
    pytest.importorskip("cryptography")  # Security.temporary() makes its certificates with it
    with Cluster(2, engine=EngineConfig(num_blocks=64), security=True, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        assert all(a.startswith("tls://") for a in cluster.instances()["address"])
        assert cluster.frontend.address.startswith("tls://")
        stream = cluster.stream("Once upon a time", max_tokens=40, ignore_eos=True, details=True)
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 3:
                assert cluster.migrate(chunk.request_id)["ok"]  # KV blocks between workers over TLS too
        assert len([t for c in chunks for t in c.token_ids]) == 40 and len({c.instance_id for c in chunks}) == 2
