"""Live migration between two real Dask workers over TCP comm: the stream stays bit-identical."""

from __future__ import annotations

import pytest
import torch
from migration_helpers import FAST, engine_config, free_blocks, make_request

from llumnix_dask.migration import DaskEndpoint, MigrationDestination, migrate_out, register_migration_handlers
from engine_runner import EngineRunner, RecordedStreams
from llumnix_dask.migration.transport import decode_buffer, encode_buffer

# The workers live in this process (processes=False) but talk over real TCP comm servers, so every
# stage goes through distributed's serialization and sockets; one token stream object records both
# (a fresh one per test: the backends run the same request ids).
STREAMS = RecordedStreams()


def start_instance(config, dask_worker):
    from llumnix_dask.engine import create_engine

    engine = create_engine(config, str(dask_worker.name))
    destination = MigrationDestination(engine, FAST)
    register_migration_handlers(dask_worker, destination)
    dask_worker._migration_test = (engine, EngineRunner(engine, STREAMS), destination, free_blocks(engine))


def add_request(request, dask_worker):
    dask_worker._migration_test[1].add(request)


async def migrate(request_id, dst_address, dask_worker):
    engine = dask_worker._migration_test[1].migration_engine
    result = await migrate_out(engine, request_id, DaskEndpoint(dst_address, dask_worker.rpc), FAST)
    return result.to_dict()


def holds(request_id, dask_worker):
    return dask_worker._migration_test[0].get_request(request_id) is not None


def stop_instance(dask_worker):
    engine, runner, destination, free0 = dask_worker._migration_test
    runner.stop()
    destination.close()
    free = free_blocks(engine)
    if hasattr(engine, "close"):
        engine.close()
    return {"free": free, "free0": free0, "reserved": destination.reserved_blocks}


@pytest.mark.e2e
def test_migration_between_two_dask_workers_is_bit_identical(backend, reference):
    from distributed import Client, LocalCluster

    global STREAMS
    STREAMS = RecordedStreams()
    with LocalCluster(n_workers=2, processes=False, protocol="tcp://", threads_per_worker=1,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        client.run(start_instance, engine_config(backend))
        greedy, seeded = make_request(40, max_tokens=150), make_request(41, seeded=True, max_tokens=150)
        for r in (greedy, seeded):
            client.run(add_request, r, workers=[a])
        results = []
        for hop, (src, dst) in enumerate([(a, b), (b, a), (a, b)]):
            for r in (greedy, seeded):
                assert STREAMS.wait_for(lambda: len(STREAMS.tokens(r.request_id)) >= 10 + 15 * hop, 60)
                results.append(client.run(migrate, r.request_id, dst, workers=[src])[src])
        assert STREAMS.wait_for(lambda: STREAMS.finished(greedy.request_id) and STREAMS.finished(seeded.request_id), 60)
        ends = client.run(stop_instance)

    assert [r["outcome"] for r in results] == ["committed"] * 6, results
    assert all(r["stages"][-1]["paused"] and sum(s["bytes"] for s in r["stages"]) > 0 for r in results)
    for r in (greedy, seeded):
        assert STREAMS.tokens(r.request_id) == reference(r)
        assert len(set(STREAMS.instances(r.request_id))) == 2
    for end in ends.values():
        assert end["free"] == end["free0"] and end["reserved"] == 0


def test_staging_buffer_travels_as_its_own_frame_in_any_dtype():
    from distributed.protocol import dumps, loads

    for dtype in (torch.float32, torch.bfloat16):
        buffer = torch.randn(4, 2, 8, 16, 2, 64).to(dtype)
        frames = dumps({"op": "x", "buffer": encode_buffer(buffer)})
        nbytes = buffer.numel() * buffer.element_size()
        assert nbytes in [len(memoryview(f).cast("B")) for f in frames]  # raw bytes, not inside msgpack
        back = decode_buffer(loads(frames)["buffer"])
        assert back.dtype == dtype and torch.equal(back, buffer)
