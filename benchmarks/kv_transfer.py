"""How fast do KV staging buffers move between two Dask workers, next to a raw loopback socket?

Two Dask worker processes on this machine; each run moves 64 MB from the first worker to the second:

* raw socket: ``sendall`` of one 64 MB buffer into ``recv_into`` a preallocated one, acknowledged by a
  byte - the ceiling for process-to-process bytes over loopback here;
* dask comm: the migration transport's wire path - 16 MB chunks (``MigrationConfig.min_chunk_bytes``)
  sent with ``to_serialize`` to a handler on the destination worker (received, not scattered);
* staging: the whole migration stage between two nano engines - reserve 1024 blocks on the destination,
  gather them from the source's KV cache, send, scatter into the destination's cache (``send_stage``).

Prints a table (median of the repetitions, GB/s) and writes benchmarks/results/kv_transfer.json.
Target (issue 4): dask comm >= 80% of the raw socket.

    python benchmarks/kv_transfer.py               # ~30 s
    python benchmarks/kv_transfer.py --repeats 10 --megabytes 128
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).parent))
from _common import print_rows, save  # noqa: E402

from llumnix_dask.config import EngineConfig, MigrationConfig, worker_dask_config  # noqa: E402
from llumnix_dask.migration.staging import MESSAGES_IN_FLIGHT  # noqa: E402

CONFIG = MigrationConfig()
# Keep freed receive buffers in the workers' heaps, as the llumnix cluster does (see config.WORKER_PRE_SPAWN_ENV).
WORKER_MALLOC = worker_dask_config()


# -- destination worker ------------------------------------------------------------------------------
def start_destination(num_blocks, nbytes, dask_worker):
    """A nano engine with migration handlers, a sink handler and a raw socket server."""
    from llumnix_dask.engine import create_engine
    from llumnix_dask.migration import MigrationDestination, register_migration_handlers
    from llumnix_dask.migration.transport import decode_buffer

    engine = create_engine(EngineConfig(num_blocks=num_blocks), f"dst-{dask_worker.name}")
    register_migration_handlers(dask_worker, MigrationDestination(engine, CONFIG), reaper=False)

    async def sink(buffers):
        return sum(decode_buffer(b).numel() for b in buffers)  # received and viewed, like the real handler

    dask_worker.handlers["bench_sink"] = sink
    dask_worker._bench_engine = engine

    server = socket.create_server(("127.0.0.1", 0))
    target = bytearray(nbytes)  # preallocated once: the ceiling, not the allocator, is measured

    def serve():
        while True:
            conn, _ = server.accept()
            with conn:
                size = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "little")
                view, got = memoryview(target), 0
                while got < size:
                    got += conn.recv_into(view[got:], size - got)
                conn.sendall(b"k")

    threading.Thread(target=serve, daemon=True).start()
    return server.getsockname()[1]


# -- source worker -----------------------------------------------------------------------------------
def start_source(num_blocks, dask_worker):
    from llumnix_dask.engine import create_engine

    dask_worker._bench_engine = create_engine(EngineConfig(num_blocks=num_blocks), f"src-{dask_worker.name}")


def raw_socket(port, nbytes):
    payload = bytearray(nbytes)
    with socket.create_connection(("127.0.0.1", port)) as conn:
        start = time.perf_counter()
        conn.sendall(nbytes.to_bytes(8, "little"))
        conn.sendall(payload)
        assert conn.recv(1) == b"k"
        return time.perf_counter() - start


async def dask_wire(dst, nbytes, dask_worker):
    import torch

    from llumnix_dask.migration.transport import encode_buffer

    # Like a live stage: messages of min_chunk_bytes, each made of max_gather_bytes pieces (one frame each).
    chunk, piece = CONFIG.min_chunk_bytes, CONFIG.max_gather_bytes
    messages = [[torch.randint(0, 256, (min(piece, nbytes - j),), dtype=torch.uint8) for j in range(i, min(i + chunk, nbytes), piece)]
                for i in range(0, nbytes, chunk)]
    remote = dask_worker.rpc(dst)
    start = time.perf_counter()
    in_flight: set = set()
    for pieces in messages:  # as many messages on the wire at once as in a migration stage
        if len(in_flight) >= MESSAGES_IN_FLIGHT:
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
        in_flight.add(asyncio.ensure_future(remote.bench_sink(buffers=[encode_buffer(p) for p in pieces])))
    await asyncio.gather(*in_flight)
    return time.perf_counter() - start


async def staging(dst, num_blocks, rep, dask_worker):
    from llumnix_dask.migration import DaskEndpoint
    from llumnix_dask.migration.staging import send_stage

    endpoint = DaskEndpoint(dst, dask_worker.rpc)
    mid = f"bench-{rep}"
    start = time.perf_counter()
    nbytes = await send_stage(dask_worker._bench_engine, endpoint, mid, "r", list(range(num_blocks)), 0, CONFIG,
                              first_stage=False)
    elapsed = time.perf_counter() - start
    await endpoint.abort(mid, "benchmark")  # free the destination's blocks again
    return elapsed, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    nbytes = args.megabytes * 2**20

    import dask
    from distributed import Client, LocalCluster

    from llumnix_dask.engine import create_engine

    block = create_engine(EngineConfig(num_blocks=1), "probe").export_blocks([0]).nbytes
    num_blocks = nbytes // block
    with dask.config.set(WORKER_MALLOC), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        src, dst = sorted(client.scheduler_info()["workers"])
        port = client.run(start_destination, num_blocks + CONFIG.dst_watermark_blocks + 8, nbytes, workers=[dst])[dst]
        client.run(start_source, num_blocks + 8, workers=[src])
        on_src = lambda f, *a: client.run(f, *a, workers=[src])[src]  # noqa: E731
        times = {"raw socket": [], "dask comm": [], "staging": []}
        for rep in tqdm(range(args.repeats + 1), desc="repeats"):  # the first round warms up
            t = {"raw socket": on_src(raw_socket, port, nbytes), "dask comm": on_src(dask_wire, dst, nbytes)}
            t["staging"], sent = on_src(staging, dst, num_blocks, rep)
            assert sent == num_blocks * block
            if rep:
                for k, v in t.items():
                    times[k].append(v)

    raw = statistics.median(times["raw socket"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        moved = nbytes if name != "staging" else num_blocks * block
        rows.append({"path": name, "ms": 1e3 * med, "best_ms": 1e3 * min(ts), "gbps": moved / med / 1e9,
                     "vs_raw_pct": 100 * raw / med * moved / nbytes})
    print(f"\n{args.megabytes} MB worker -> worker over loopback, median of {args.repeats} "
          f"(chunks of {CONFIG.min_chunk_bytes // 2**20} MB; staging = {num_blocks} blocks of {block // 1024} KiB)")
    print_rows(rows, [("path", "path", 0), ("ms", "median ms", 1), ("best_ms", "best ms", 1), ("gbps", "GB/s", 2),
                      ("vs_raw_pct", "% of raw", 0)])
    save("kv_transfer", {"megabytes": args.megabytes, "repeats": args.repeats, "chunk_bytes": CONFIG.min_chunk_bytes,
                         "rows": rows, "samples_s": times,
                         "config": dataclasses.asdict(CONFIG)})


if __name__ == "__main__":
    main()
