"""The client side's records of a request: its handle while in flight, its chunks, its completion."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from llumnix_dask.client.token_order import TokenOrder
from llumnix_dask.request import Request


@dataclass
class StreamChunk:
    """New tokens of one request, in order. ``index`` is the position of the first one in the output."""

    request_id: str
    index: int
    token_ids: list[int]
    text: str
    finished: bool = False
    finish_reason: str | None = None
    instance_id: str | None = None


@dataclass
class Completion:
    """A finished request: its text and what was measured about it."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None
    num_prompt_tokens: int
    priority: int
    instances: list[str]  # every instance that produced tokens, in order (more than one = migrated)
    ttft: float | None
    tpot: float | None
    e2e: float | None
    dispatch_s: float
    max_token_gap_s: float | None = None  # the longest wait between two of its tokens (a stall, if large)

    @property
    def num_migrations(self) -> int:
        return max(0, len(self.instances) - 1)


@dataclass
class RequestHandle:
    """The frontend's view of one request in flight."""

    request: Request
    queue: asyncio.Queue
    instance_id: str = ""  # where it was last sent (dispatch, or recovery)
    address: str = ""
    dispatch_s: float = 0.0
    order: TokenOrder = field(default_factory=TokenOrder)
    token_ids: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None
    last_progress: float = 0.0
    start: float = 0.0
    recoveries: int = 0
    last_check: float = 0.0  # when the health check last asked about it (monotonic)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def instances(self) -> list[str]:
        """Every instance that produced tokens, in order (more than one: migrated or recovered)."""
        return self.order.instances

    @property
    def holder(self) -> str:
        """The instance that holds the request as far as this frontend knows."""
        return self.order.following or self.instance_id
