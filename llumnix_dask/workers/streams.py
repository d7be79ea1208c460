"""Token streams from a worker straight to frontends, one batched Dask comm per frontend.

The frontend runs a tiny Dask ``Server`` with the handler that reads a token stream
(:mod:`llumnix_dask.wire.frontend_api`); the worker opens one comm to it and writes
:class:`~llumnix_dask.wire.frontend_api.TokenBatch` messages through a ``BatchedSend`` (a millisecond of
coalescing, order kept). A dead frontend only drops its own messages; the next message to it reconnects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from distributed.batched import BatchedSend
from distributed.comm import connect

from llumnix_dask.wire import stream_message
from llumnix_dask.wire.frontend_api import OPEN_TOKEN_STREAM_OP, TokenBatch, TokenMessage

logger = logging.getLogger(__name__)


class FrontendStreams:
    """Per-frontend batched sends of token messages. Use from the event loop only."""

    def __init__(self, connection_args: dict | None = None, interval: str = "1ms") -> None:
        self._connection_args = connection_args or {}
        self._interval = interval
        self._streams: dict[str, BatchedSend] = {}
        self._connecting: dict[str, asyncio.Task] = {}

    def send(self, by_frontend: dict[str, list[TokenMessage]]) -> None:
        for address, messages in by_frontend.items():
            stream = self._streams.get(address)
            if stream is None or stream.closed():
                stream = self._open(address)
            try:
                stream.send(stream_message(TokenBatch(messages=messages)))
            except Exception:  # CommClosedError: the frontend went away
                logger.info("token stream to %s closed; dropping %d messages", address, len(messages))
                self._streams.pop(address, None)

    def _open(self, address: str) -> BatchedSend:
        stream = BatchedSend(interval=self._interval)
        self._streams[address] = stream
        self._connecting[address] = asyncio.ensure_future(self._connect(address, stream))
        return stream

    async def _connect(self, address: str, stream: BatchedSend) -> None:
        try:
            comm = await connect(address, **self._connection_args)
            await comm.write({"op": OPEN_TOKEN_STREAM_OP, "reply": False})
            stream.start(comm)  # flushes what was buffered while connecting
        except Exception as exc:
            logger.warning("cannot open a token stream to frontend %s: %s", address, exc)
            if self._streams.get(address) is stream:
                del self._streams[address]
        finally:
            self._connecting.pop(address, None)

    async def close(self) -> None:
        for task in list(self._connecting.values()):
            task.cancel()
        for stream in list(self._streams.values()):
            try:
                await stream.close(timeout=1)
            except Exception:
                pass
        self._streams.clear()

    def __len__(self) -> int:
        return len(self._streams)

    def __repr__(self) -> Any:
        return f"<FrontendStreams to {len(self._streams)} frontends>"
