"""The source's view of a migration destination: the five calls of the handshake, whatever the transport."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from llumnix_dask.engine.base import MigrationState
from llumnix_dask.request import Request


@runtime_checkable
class DestinationEndpoint(Protocol):
    """The source's view of one destination instance; every call may raise or hang (dead peer).

    Implementations: ``InProcessEndpoint`` (tests), ``DaskEndpoint`` (worker to worker over Dask comm)
    and ``NcclEndpoint`` (GPU to GPU), all in ``llumnix_dask.migration.transport`` / ``.nccl``.
    """

    name: str
    transport: str  # the path the blocks take, as migration logs show it ("dask", "in-process", "nccl")

    async def reserve(self, migration_id: str, request_id: str, num_blocks: int) -> bool:
        """Pre-allocate ``num_blocks`` more blocks for this migration; False = refused."""

    async def send_blocks(self, migration_id: str, start: int, counts: list[int], buffers: list[Any]) -> None:
        """Deliver ``export_blocks`` buffers, of ``counts[i]`` blocks each, into the reserved blocks
        ``start, start+1, ...`` (in order, one message)."""

    async def commit(
        self, migration_id: str, state: MigrationState, counts: list[int] = (), buffers: list[Any] = ()
    ) -> bool:
        """The destination adopts the request; it decodes on there from now on.

        ``counts`` / ``buffers`` carry the last blocks, which the destination reserves and scatters
        first (one round trip for the whole paused stage). False: no room for them, nothing changed.
        """

    async def abort(self, migration_id: str, reason: str) -> None:
        """Free everything reserved for this migration (undo a commit whose ack was lost)."""

    async def enqueue(self, migration_id: str, request: Request) -> bool:
        """Queue a never-started request on the destination; False = refused."""
