"""GPU transport: staging buffers go GPU to GPU with NCCL send/recv (cupy), control over Dask comm.

Communicators are per *direction* of a worker pair, created on first use and kept until the peer
leaves (:meth:`NcclPeers.drop`), so scaling the cluster never rebuilds the others. The sender always
creates its outgoing communicator: it draws the NCCL unique id and hands it to the receiver through the
receiver (:class:`~llumnix_dask.wire.worker_api.NcclInit`), both ranks joining at once. One communicator per direction
(instead of one per pair) means a communicator only ever carries sends one way, serialized by the
sender, so two instances migrating to each other at the same time cannot deadlock on a shared one.

Every transfer is: the sender sends the receiver a :class:`~llumnix_dask.wire.worker_api.NcclBlocks`
(dtypes, shapes, migration id) and, concurrently, posts ``ncclSend`` on a side stream; the handler posts the matching
``ncclRecv`` into a fresh GPU buffer, waits for it and scatters it into the pre-allocated blocks.
Engine streams never wait on the network: the side stream only waits (on the GPU) for the export.

cupy is imported lazily; without a GPU nothing here is used. Wiring on each GPU worker::

    peers = NcclPeers(worker)                      # after register_migration_handlers(worker, dst)
    endpoint = NcclEndpoint(dst_address, peers)    # on the source, per migration
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import torch

from llumnix_dask.engine.base import MigrationState
from llumnix_dask.migration.transport import DaskEndpoint
from llumnix_dask.wire import call, handlers
from llumnix_dask.wire.worker_api import BufferMeta, NcclBlocks, NcclInit


def _nccl() -> Any:
    from cupy.cuda import nccl  # lazy: cupy is the optional "gpu" extra

    return nccl


class _Link:
    """One direction of a worker pair: a 2-rank communicator and its side stream (rank 0 sends)."""

    def __init__(self, comm: Any, device: torch.device):
        self.comm = comm
        self.device = device
        self.stream = torch.cuda.Stream(device=device)
        self.lock = threading.Lock()  # an NCCL communicator must not be driven from two threads at once

    def send(self, buffers: list[torch.Tensor]) -> None:
        nccl = _nccl()
        with self.lock, torch.cuda.device(self.device):
            ready = torch.cuda.Event()
            ready.record(torch.cuda.current_stream(self.device))  # after the exports that made the buffers
            self.stream.wait_event(ready)
            for buffer in buffers:  # matched one by one, in order, by the receiver's ncclRecv
                self.comm.send(buffer.data_ptr(), buffer.numel() * buffer.element_size(), nccl.NCCL_UINT8, 1,
                               self.stream.cuda_stream)
                buffer.record_stream(self.stream)  # the allocator must not reuse it before the send ends
            self.stream.synchronize()

    def recv(self, buffers: list[torch.Tensor]) -> None:
        nccl = _nccl()
        with self.lock, torch.cuda.device(self.device):
            self.stream.wait_stream(torch.cuda.current_stream(self.device))  # buffers allocated
            for buffer in buffers:
                self.comm.recv(buffer.data_ptr(), buffer.numel() * buffer.element_size(), nccl.NCCL_UINT8, 0,
                               self.stream.cuda_stream)
            self.stream.synchronize()  # the scatter that follows runs on another stream

    def close(self) -> None:
        with self.lock:
            self.comm.destroy()


class NcclPeers:
    """This worker's NCCL links to other workers; installs the ``llumnix_nccl_*`` handlers."""

    def __init__(self, worker: Any, device: torch.device | int | None = None):
        if not torch.cuda.is_available():
            raise RuntimeError("NcclPeers: no CUDA device is visible to this worker")
        self.worker = worker
        if device is None:
            index = torch.cuda.current_device()
        elif isinstance(device, int):
            index = device
        else:
            index = torch.device(device).index or 0
        self.device = torch.device("cuda", index)
        self._out: dict[str, _Link] = {}  # peer address -> link we send on
        self._in: dict[str, _Link] = {}  # peer address -> link we receive on
        self._setup: dict[str, asyncio.Lock] = {}
        worker.handlers.update(handlers((NcclInit, self._handle_init), (NcclBlocks, self._handle_blocks)))
        worker._llumnix_nccl_peers = self

    @property
    def address(self) -> str:
        return self.worker.address

    def _new_comm(self, uid: Any, rank: int) -> Any:
        nccl = _nccl()
        import cupy

        with cupy.cuda.Device(self.device.index):
            return nccl.NcclCommunicator(2, uid, rank)  # blocks until the other rank joins

    async def outgoing(self, peer: str) -> _Link:
        """The link to send to ``peer``, created (once) by this side."""
        link = self._out.get(peer)
        if link is not None:
            return link
        lock = self._setup.setdefault(peer, asyncio.Lock())
        async with lock:
            link = self._out.get(peer)
            if link is None:
                uid = _nccl().get_unique_id()
                remote = call(self.worker.rpc(peer), NcclInit(src=self.address, uid=list(uid)))
                comm, _ = await asyncio.gather(asyncio.to_thread(self._new_comm, uid, 0), remote)
                link = self._out[peer] = _Link(comm, self.device)
        return link

    async def _handle_init(self, msg: NcclInit) -> None:
        uid, src = tuple(msg.uid), msg.src  # cupy's unique id: a tuple of 128 small ints
        comm = await asyncio.to_thread(self._new_comm, uid, 1)
        old = self._in.pop(src, None)
        self._in[src] = _Link(comm, self.device)
        if old is not None:  # the peer restarted and built a new link: the old one is dead
            await asyncio.to_thread(old.close)

    async def _handle_blocks(self, msg: NcclBlocks) -> None:
        src = msg.src
        link = self._in.get(src)
        if link is None:
            raise RuntimeError(f"no NCCL link from {src} to {self.address}")
        destination = getattr(self.worker, "_llumnix_migration_destination", None)
        if destination is None:
            raise RuntimeError(f"{self.address} is not a migration destination (register_migration_handlers)")
        buffers = [torch.empty(m.shape, dtype=getattr(torch, m.dtype), device=self.device) for m in msg.metas]
        # Receive first even if the migration is unknown here: the sender's ncclSends must be matched.
        await asyncio.to_thread(link.recv, buffers)
        await asyncio.to_thread(destination.receive_blocks, msg.migration_id, msg.start, msg.counts, buffers)

    async def send(
        self, peer: str, migration_id: str, start: int | None, counts: list[int], buffers: list[torch.Tensor]
    ) -> None:
        link = await self.outgoing(peer)
        buffers = [b.contiguous() if b.device == self.device else b.to(self.device).contiguous() for b in buffers]
        metas = [BufferMeta(dtype=str(b.dtype).removeprefix("torch."), shape=list(b.shape)) for b in buffers]
        remote = call(self.worker.rpc(peer), NcclBlocks(src=self.address, migration_id=migration_id, start=start,
                                                        counts=list(counts), metas=metas))
        sending = asyncio.ensure_future(asyncio.to_thread(link.send, buffers))
        try:
            await remote
        except BaseException:
            # If the receiver never posted its ncclRecv (error, restart, timeout) our ncclSend waits
            # forever: abort the communicator to end it; the next transfer builds a fresh link. (A
            # receiver that failed only after receiving leaves the send finished and the link healthy.)
            await asyncio.wait({sending}, timeout=1.0)
            if not sending.done():
                self._out.pop(peer, None)
                link.comm.abort()
            raise
        await sending

    def drop(self, peer: str) -> None:
        """Forget the links to a worker that left the cluster (abort: its peer may be gone mid-transfer)."""
        for links in (self._out, self._in):
            link = links.pop(peer, None)
            if link is not None:
                link.comm.abort()
        self._setup.pop(peer, None)


def _all_cuda(buffers: list[Any]) -> bool:
    return all(isinstance(b, torch.Tensor) and b.is_cuda for b in buffers)


class NcclEndpoint(DaskEndpoint):
    """A destination on another GPU worker: control messages over Dask comm, KV blocks over NCCL.

    Sends to one destination are serialized (one NCCL transfer in flight per direction), matching the
    order of ``ncclSend`` on this side with ``ncclRecv`` on the other.
    """

    transport = "nccl"

    def __init__(self, address: str, peers: NcclPeers, name: str | None = None):
        super().__init__(address, peers.worker.rpc, name)
        self.peers = peers

    async def send_blocks(self, migration_id: str, start: int | None, counts: list[int], buffers: list[Any]) -> None:
        if not _all_cuda(buffers):
            await super().send_blocks(migration_id, start, counts, buffers)  # a CPU engine: plain comm
            return
        lock = self.peers._setup.setdefault(f"send:{self.address}", asyncio.Lock())
        async with lock:
            await self.peers.send(self.address, migration_id, start, counts, buffers)

    async def commit(
        self, migration_id: str, state: MigrationState, counts: list[int] = (), buffers: list[Any] = ()
    ) -> bool:
        if buffers and _all_cuda(buffers):
            # GPU tail: reserve and move it over NCCL first, then a plain commit.
            if not await self.reserve(migration_id, state.request.request_id, sum(counts)):
                return False
            await self.send_blocks(migration_id, None, counts, buffers)  # None: the blocks just reserved
            return await super().commit(migration_id, state)
        return await super().commit(migration_id, state, counts, buffers)
