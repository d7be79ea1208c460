"""Ways for a migration source to reach its destination (implementations of ``DestinationEndpoint``).

* :class:`InProcessEndpoint` - both engines in one process (unit tests, notebooks). The state is
  pickled on the way, as over a wire, so nothing is shared by accident.
* :class:`DaskEndpoint` - worker to worker over Dask comm. The destination worker serves the migration
  messages of :mod:`llumnix_dask.wire.worker_api` (:func:`register_migration_handlers`); each stage's
  staging buffers travel beside its message as raw frames (``to_serialize``: no pickling, no copy into the
  message), and are scattered into the pre-allocated blocks on arrival.
* ``NcclEndpoint`` (``llumnix_dask.migration.nccl``) - GPU to GPU with cupy NCCL send/recv; control
  messages still go over the Dask handlers below.

Wiring on a Dask worker (the llumlet does this)::

    destination = MigrationDestination(engine, config)
    register_migration_handlers(worker, destination)
    ...
    # on the source worker, in its event loop:
    result = await migrate_out(engine, rid, DaskEndpoint(dst_address, worker.rpc), config)
"""

from __future__ import annotations

import asyncio
import pickle
import warnings
from typing import Any

import numpy as np
import torch

from llumnix_dask.engine.base import MigrationState
from llumnix_dask.migration.destination import MigrationDestination
from llumnix_dask.request import Request
from llumnix_dask.wire import call, handler, handlers
from llumnix_dask.wire.worker_api import MIGRATION_OPS, AbortMigration, Commit, Enqueue, Reserve, SendBlocks


class InProcessEndpoint:
    """A destination in this process; copies run in a worker thread like they would remotely."""

    transport = "in-process"

    def __init__(self, destination: MigrationDestination, name: str | None = None):
        self.destination = destination
        self.name = name or destination.name

    async def reserve(self, migration_id: str, request_id: str, num_blocks: int) -> bool:
        return await asyncio.to_thread(self.destination.reserve, migration_id, request_id, num_blocks)

    async def send_blocks(self, migration_id: str, start: int, counts: list[int], buffers: list[Any]) -> None:
        await asyncio.to_thread(self.destination.receive_blocks, migration_id, start, counts, buffers)

    async def commit(
        self, migration_id: str, state: MigrationState, counts: list[int] = (), buffers: list[Any] = ()
    ) -> bool:
        state = pickle.loads(pickle.dumps(state))  # the destination must own its copy, as over a wire
        return await asyncio.to_thread(self.destination.commit, migration_id, state, counts, buffers)

    async def abort(self, migration_id: str, reason: str) -> None:
        await asyncio.to_thread(self.destination.abort, migration_id, reason)

    async def enqueue(self, migration_id: str, request: Request) -> bool:
        request = pickle.loads(pickle.dumps(request))
        return await asyncio.to_thread(self.destination.enqueue, migration_id, request)


# -- buffers on the wire -------------------------------------------------------------------------------
def encode_buffer(buffer: torch.Tensor) -> dict[str, Any]:
    """A staging buffer as a message part: its bytes as one zero-copy frame plus dtype and shape."""
    from distributed.protocol import to_serialize

    if not isinstance(buffer, torch.Tensor):
        # Engines without tensors (the sim backend) export a small plain-data descriptor: it travels as it is.
        return {"object": buffer}
    flat = buffer.detach().contiguous()
    if flat.device.type == "cuda":
        flat = _to_host(flat)
    elif flat.device.type != "cpu":
        flat = flat.cpu()
    raw = flat.reshape(-1).view(torch.uint8).numpy()  # bfloat16 has no numpy dtype; bytes always do
    return {"dtype": str(flat.dtype).removeprefix("torch."), "shape": list(flat.shape), "data": to_serialize(raw)}


_COPY_STREAMS: dict[int, Any] = {}


def _to_host(buffer: torch.Tensor) -> torch.Tensor:
    """GPU -> pinned host copy on a side stream of the buffer's device.

    A plain ``.cpu()`` copies on the current stream, so the engine's next decode steps (queued on that stream
    by its step thread) would wait behind the whole transfer; on the side stream they run while it copies.
    The copy waits (on the GPU) for what the current stream holds now: the gather that made ``buffer``.
    """
    device = buffer.device
    stream = _COPY_STREAMS.get(device.index)
    if stream is None:
        stream = _COPY_STREAMS[device.index] = torch.cuda.Stream(device=device)
    stream.wait_stream(torch.cuda.current_stream(device))
    host = torch.empty(buffer.shape, dtype=buffer.dtype, pin_memory=True)
    with torch.cuda.stream(stream):
        host.copy_(buffer, non_blocking=True)
    buffer.record_stream(stream)  # the allocator must not reuse it before the copy ends
    stream.synchronize()
    return host


def decode_buffer(message: dict[str, Any]) -> Any:
    """Inverse of :func:`encode_buffer`, viewing the received frame without copying it."""
    if "object" in message:
        return message["object"]
    raw = np.asarray(message["data"], dtype=np.uint8)
    with warnings.catch_warnings():
        # A read-only frame: the engine only reads it (scatter copies out of it).
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.from_numpy(raw)
    return flat.view(getattr(torch, message["dtype"])).reshape(message["shape"])


async def _encode_all(buffers: list[Any]) -> list[dict[str, Any]]:
    """Message parts for ``buffers``: CPU tensors as views (no copy); GPU ones copied to the host in a thread."""
    if any(getattr(b, "is_cuda", False) for b in buffers):
        return await asyncio.to_thread(lambda: [encode_buffer(b) for b in buffers])
    return [encode_buffer(b) for b in buffers]


class DaskEndpoint:
    """A destination on another Dask worker, reached through that worker's comm server.

    ``rpc`` is a ``distributed.core.ConnectionPool`` (``worker.rpc`` on a worker, ``client.rpc`` on a
    client) so connections are reused between stages and migrations.
    """

    transport = "dask"

    def __init__(self, address: str, rpc: Any, name: str | None = None):
        self.address = address
        self.rpc = rpc
        self.name = name or address

    def _remote(self) -> Any:
        return self.rpc(self.address)

    async def reserve(self, migration_id: str, request_id: str, num_blocks: int) -> bool:
        return await call(self._remote(), Reserve(migration_id=migration_id, request_id=request_id,
                                                  num_blocks=num_blocks), bool)

    async def send_blocks(self, migration_id: str, start: int, counts: list[int], buffers: list[Any]) -> None:
        encoded = await _encode_all(buffers)
        await call(self._remote(), SendBlocks(migration_id=migration_id, start=start, counts=list(counts)),
                   buffers=encoded)

    async def commit(
        self, migration_id: str, state: MigrationState, counts: list[int] = (), buffers: list[Any] = ()
    ) -> bool:
        encoded = await _encode_all(buffers)
        return await call(self._remote(), Commit(migration_id=migration_id, state=state, counts=list(counts)),
                          bool, buffers=encoded)

    async def abort(self, migration_id: str, reason: str) -> None:
        await call(self._remote(), AbortMigration(migration_id=migration_id, reason=reason))

    async def enqueue(self, migration_id: str, request: Request) -> bool:
        return await call(self._remote(), Enqueue(migration_id=migration_id, request=request), bool)


def register_migration_handlers(worker: Any, destination: MigrationDestination, *, reaper: bool = True) -> None:
    """Serve ``destination`` on ``worker``'s comm server (the migration messages of ``wire.worker_api``).

    Every handler runs the engine call in a thread: the engine's lock may be held for a whole step and
    the worker's event loop must keep serving heartbeats and token streams meanwhile. With ``reaper``
    a daemon thread frees pre-allocations whose source went silent (``dst_timeout_s``).
    """

    async def reserve(msg: Reserve) -> bool:
        return await asyncio.to_thread(destination.reserve, msg.migration_id, msg.request_id, msg.num_blocks)

    async def blocks(msg: SendBlocks, buffers: list[dict] = ()) -> None:
        tensors = [decode_buffer(b) for b in buffers]
        await asyncio.to_thread(destination.receive_blocks, msg.migration_id, msg.start, msg.counts, tensors)

    async def commit(msg: Commit, buffers: list[dict] = ()) -> bool:
        tensors = [decode_buffer(b) for b in buffers]
        return await asyncio.to_thread(destination.commit, msg.migration_id, msg.state, msg.counts, tensors)

    async def abort(msg: AbortMigration) -> bool:
        return await asyncio.to_thread(destination.abort, msg.migration_id, msg.reason)

    async def enqueue(msg: Enqueue) -> bool:
        return await asyncio.to_thread(destination.enqueue, msg.migration_id, msg.request)

    worker.handlers.update(handlers((Reserve, reserve), (AbortMigration, abort), (Enqueue, enqueue)))
    worker.handlers.update({m.op: handler(m, fn, extras=("buffers",)) for m, fn in ((SendBlocks, blocks), (Commit, commit))})
    worker._llumnix_migration_destination = destination  # for the NCCL handlers and introspection
    if reaper:
        destination.start_reaper()


def unregister_migration_handlers(worker: Any) -> None:
    """Remove the handlers and free every pre-allocation (the instance is shutting down)."""
    for op in MIGRATION_OPS:
        worker.handlers.pop(op, None)
    destination = getattr(worker, "_llumnix_migration_destination", None)
    if destination is not None:
        destination.close()
        worker._llumnix_migration_destination = None
