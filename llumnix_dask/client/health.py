"""The frontend's health check: requests that stall, wait for a token message that never came, or whose
instance's token stream closed are looked up on the instances that hold them (one call per instance, through
the global scheduler). A request no instance holds (its instance died, or restarted empty) continues on
another instance from the tokens it already streamed, or fails with a clear error when recovery is off; a
missing token is fetched again from the holder.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol

from llumnix_dask.client.errors import InstanceLost, RequestFailed
from llumnix_dask.client.records import RequestHandle
from llumnix_dask.config import FrontendConfig
from llumnix_dask.request import Request
from llumnix_dask.wire import call
from llumnix_dask.wire.frontend_api import TokenMessage
from llumnix_dask.wire.scheduler_api import AskProgress, Progress, ProgressQuery

logger = logging.getLogger(__name__)


class Watched(Protocol):
    """What the health check needs of the frontend it watches (the Frontend of ``frontend.py``)."""

    scheduler: Any  # an rpc to the global scheduler

    def active(self) -> list[RequestHandle]: ...

    def is_active(self, handle: RequestHandle) -> bool: ...

    def deliver(self, handle: RequestHandle, msg: TokenMessage, now: float | None = None) -> None: ...

    def fail(self, handle: RequestHandle, message: str, kind: type[RequestFailed] = RequestFailed) -> None: ...

    async def send(self, handle: RequestHandle, request: Request) -> None: ...


class Health:
    """Watches one frontend's requests in flight (see the module docstring)."""

    def __init__(self, frontend: Watched, config: FrontendConfig) -> None:
        self.frontend = frontend
        self.config = config
        self._suspects: dict[str, float] = {}  # instance -> since when its token stream closed
        self._check_now = asyncio.Event()
        self.num_recovered = 0  # requests continued on another instance after theirs died
        self.num_replayed = 0  # token messages that never arrived and were fetched again

    def stream_closed(self, instances: set[str]) -> None:
        """A worker's token stream closed: its instances may have died; check their requests at once."""
        now = time.monotonic()
        for inst in instances:
            self._suspects.setdefault(inst, now)
        self._check_now.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._check_now.wait(), self.config.health_check_interval_s)
            except asyncio.TimeoutError:
                pass
            self._check_now.clear()
            try:
                await self.check()
            except Exception:  # never let the watchdog die
                logger.exception("frontend health check failed")

    async def check(self) -> None:
        cfg, now, perf = self.config, time.monotonic(), time.perf_counter()
        for inst, since in list(self._suspects.items()):
            if now - since > cfg.stall_check_s:
                del self._suspects[inst]  # a closed stream of an instance that lives on: it reconnects
        suspects = set(self._suspects)
        due = [h for h in self.frontend.active() if h.address and (
            h.holder in suspects
            or h.order.gap_age(perf) > cfg.token_gap_timeout_s
            or (now - h.last_progress > cfg.stall_check_s and now - h.last_check > cfg.stall_check_s))]
        if not due:
            return
        for h in due:
            h.last_check = now
        queries = [ProgressQuery(request_id=h.request_id, start=h.order.next_index) for h in due]
        replies = await call(self.frontend.scheduler, AskProgress(requests=queries), list[Progress])
        for handle, reply in zip(due, replies):
            if not self.frontend.is_active(handle):
                continue
            if reply.status == "unknown":  # no instance holds it: its instance died (or restarted empty)
                await self._instance_gone(handle, handle.holder)
            elif reply.status == "OK" and (reply.ids or reply.done):
                self._replay(handle, reply)

    def _replay(self, handle: RequestHandle, reply: Progress) -> None:
        """Tokens the holder sent that did not (yet) arrive here: a message that never came fills its gap."""
        if handle.order.gap_since is not None and reply.ids:
            self.num_replayed += 1
            logger.warning("request %s: tokens from index %d never arrived; %d replayed from %s",
                           handle.request_id, reply.start, len(reply.ids), reply.instance_id)
        self.frontend.deliver(handle, TokenMessage(handle.request_id, reply.instance_id, reply.start,
                                                   list(reply.ids), None, reply.done, reply.reason))

    async def _instance_gone(self, handle: RequestHandle, instance_id: str) -> None:
        cfg = self.config
        if not cfg.recover_requests or handle.recoveries >= cfg.max_recoveries:
            why = "recovery is off" if not cfg.recover_requests else f"it was recovered {handle.recoveries} times"
            self.frontend.fail(handle, f"instance {instance_id} left the cluster while serving this request ({why})",
                               InstanceLost)
            return
        handle.recoveries += 1
        handle.order.ignore(instance_id)
        old = handle.request
        # Prompt and every token so far: the new instance recomputes their KV and samples on from there
        # (sampling is a function of seed and position, so the tokens are those the request would have had).
        continuation = Request.new(
            list(old.prompt_token_ids), old.sampling, priority=old.priority, slo_ttft_s=old.slo_ttft_s,
            request_id=old.request_id, arrival_time=old.arrival_time, prompt=old.prompt,
        )
        continuation.output_token_ids = list(handle.token_ids)
        continuation.token_times = [0.0] * len(handle.token_ids)
        logger.warning("instance %s is gone: request %s continues elsewhere after %d tokens",
                       instance_id, old.request_id, len(handle.token_ids))
        try:
            await self.frontend.send(handle, continuation)
            handle.last_progress = time.monotonic()
            self.num_recovered += 1
        except Exception as exc:
            if self.frontend.is_active(handle):
                self.frontend.fail(handle, f"instance {instance_id} left the cluster and the request could not "
                                           f"continue elsewhere: {type(exc).__name__}: {exc}", InstanceLost)
