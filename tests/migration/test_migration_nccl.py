"""GPU to GPU live migration over NCCL between two Dask workers (needs 2 CUDA GPUs and cupy)."""

from __future__ import annotations

import pytest
from migration_helpers import FAST, make_request

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.e2e,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs (NCCL forbids two ranks on one GPU)"),
]


def start_gpu_instance(dask_worker):
    import torch

    from llumnix_dask.config import EngineConfig
    from llumnix_dask.engine import create_engine
    from llumnix_dask.migration import MigrationDestination, register_migration_handlers
    from engine_runner import EngineRunner
    from llumnix_dask.migration.nccl import NcclPeers

    index = int(dask_worker.name) % 2
    torch.cuda.set_device(index)
    engine = create_engine(EngineConfig(num_blocks=96, device=f"cuda:{index}"), f"gpu{index}")
    destination = MigrationDestination(engine, FAST)
    register_migration_handlers(dask_worker, destination)
    dask_worker._nccl_test = (engine, EngineRunner(engine), destination, NcclPeers(dask_worker, device=index))


def reference_tokens(request, dask_worker):
    from llumnix_dask.config import EngineConfig
    from llumnix_dask.engine import create_engine

    engine = create_engine(EngineConfig(num_blocks=96, device=f"cuda:{int(dask_worker.name) % 2}"), "ref")
    engine.add_request(request)
    while engine.has_work():
        engine.step()
    return list(request.output_token_ids)


def add_request(request, dask_worker):
    dask_worker._nccl_test[1].add(request)


def tokens(request_id, dask_worker):
    runner = dask_worker._nccl_test[1]
    return runner.streams.tokens(request_id), runner.streams.finished(request_id)


async def migrate(request_id, dst, dask_worker):
    from llumnix_dask.migration import migrate_out
    from llumnix_dask.migration.nccl import NcclEndpoint

    _, runner, _, peers = dask_worker._nccl_test
    return (await migrate_out(runner.migration_engine, request_id, NcclEndpoint(dst, peers), FAST)).to_dict()


def finish(dask_worker):
    engine, runner, destination, _ = dask_worker._nccl_test
    runner.stop()
    load = engine.load()
    return load.total_blocks - load.used_blocks, destination.reserved_blocks, len(dask_worker._nccl_test[3]._out)


def test_nccl_migration_there_and_back_is_bit_identical():
    pytest.importorskip("cupy")
    import time

    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"], key=lambda w: client.scheduler_info()["workers"][w]["name"])
        client.run(start_gpu_instance)
        req = make_request(50, seeded=True, max_tokens=400)
        expected = client.run(reference_tokens, make_request(50, seeded=True, max_tokens=400), workers=[a])[a]
        client.run(add_request, req, workers=[a])

        def wait(worker, n):
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                got, done = client.run(tokens, req.request_id, workers=[worker])[worker]
                if len(got) >= n or done:
                    return
                time.sleep(0.01)  # polling a remote condition with a deadline
            raise AssertionError("request made no progress")

        wait(a, 20)
        there = client.run(migrate, req.request_id, b, workers=[a])[a]
        wait(b, 20)
        back = client.run(migrate, req.request_id, a, workers=[b])[b]
        deadline = time.monotonic() + 120
        while not client.run(tokens, req.request_id, workers=[a])[a][1] and time.monotonic() < deadline:
            time.sleep(0.01)
        on_a = client.run(tokens, req.request_id, workers=[a])[a][0]
        on_b = client.run(tokens, req.request_id, workers=[b])[b][0]
        ends = client.run(finish)

    assert there["outcome"] == "committed" and back["outcome"] == "committed", (there, back)
    k1, k2 = there["resume_index"], back["resume_index"]
    stream = on_a[:k1] + on_b + on_a[k1:]
    assert len(on_b) == k2 - k1
    assert stream == expected
    for free, reserved, links in ends.values():
        assert free == 96 and reserved == 0 and links == 1  # one link per direction, built once
