"""The async frontend: turns prompts into requests, dispatches them, and receives their token streams.

A :class:`Frontend` lives on one event loop (the Cluster's Dask loop). It runs a small Dask ``Server``
that workers open token streams to (see :mod:`llumnix_dask.workers.streams`), asks the global scheduler
for an instance, hands the request straight to that worker, and re-orders token messages by index so a
stream that hops instances during a live migration reaches the caller intact, each token once, in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Sequence

from distributed.core import Server
from distributed.protocol import to_serialize
from distributed.utils import get_ip

from llumnix_dask.request import Priority, Request, SamplingParams
from llumnix_dask.serve.dispatch_client import DispatchClient
from llumnix_dask.workers.streams import TOKEN_MESSAGE_OP, TOKEN_STREAM_OP

logger = logging.getLogger(__name__)

# A request that makes no progress this long gets its instance checked; a vanished instance fails it.
STALL_CHECK_S = 3.0


class NoInstanceError(RuntimeError):
    """The cluster has no engine instance that can take the request."""


class RequestFailed(RuntimeError):
    """An instance reported an error for the request (or died with it)."""


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

    @property
    def num_migrations(self) -> int:
        return max(0, len(self.instances) - 1)


@dataclass
class RequestHandle:
    """The frontend's view of one request in flight."""

    request: Request
    queue: asyncio.Queue
    instance_id: str = ""
    address: str = ""
    dispatch_s: float = 0.0
    next_index: int = 0
    pending: dict[int, dict] = field(default_factory=dict)
    token_ids: list[int] = field(default_factory=list)
    text_parts: list[str] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)
    dropped_copies: set[str] = field(default_factory=set)  # instances told to drop a duplicate copy
    finished: bool = False
    finish_reason: str | None = None
    error: str | None = None
    last_progress: float = 0.0
    start: float = 0.0

    @property
    def request_id(self) -> str:
        return self.request.request_id


class Frontend:
    """Dispatch + token reception for one process. Create and use it on a single event loop.

    ``tokenizer`` needs ``encode(str) -> list[int]``; prompts may also be given as token ids.
    ``on_finished(completion)`` is called for every finished request (metrics).
    """

    def __init__(
        self,
        scheduler_address: str,
        *,
        tokenizer: Any = None,
        host: str | None = None,
        connection_args: dict | None = None,
        on_finished: Callable[[Completion], None] | None = None,
        max_model_len: int | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._host = host
        self._connection_args = connection_args or {}
        self.on_finished = on_finished
        self.server: Server | None = None
        self.address: str | None = None
        self._active: dict[str, RequestHandle] = {}
        self._finished_reports: list[dict] = []
        self._tasks: list[asyncio.Task] = []

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> "Frontend":
        self.server = Server(
            {TOKEN_STREAM_OP: self._token_stream},
            stream_handlers={TOKEN_MESSAGE_OP: self._on_tokens},
            connection_args=self._connection_args,
        )
        host = self._host or _reachable_host(self.scheduler_address)
        await self.server.start()
        await self.server.listen(f"tcp://{host}:0", **self._connection_args)
        self.address = self.server.address
        self.dispatcher = DispatchClient(lambda: self.scheduler)
        self._tasks = [
            asyncio.create_task(self._report_loop(), name="llumnix-frontend-reports"),
            asyncio.create_task(self._watchdog(), name="llumnix-frontend-watchdog"),
        ]
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for handle in list(self._active.values()):
            self._fail(handle, "the frontend closed")
        await self._flush_reports()
        if self.server is not None:
            await self.server.close()

    @property
    def scheduler(self) -> Any:
        return self.server.rpc(self.scheduler_address)

    @property
    def num_active(self) -> int:
        return len(self._active)

    # -- requests ------------------------------------------------------------------------------------
    def make_request(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo_ttft_s: float | None = None,
        request_id: str | None = None,
    ) -> Request:
        """Tokenize and validate; raises ValueError with a message fit for a 400 response."""
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt: must not be empty")
            if self.tokenizer is None:
                raise ValueError("prompt: this frontend has no tokenizer; pass token ids")
            token_ids = list(self.tokenizer.encode(prompt))
            text = prompt
        else:
            token_ids = [int(t) for t in prompt]
            text = None
        if not token_ids:
            raise ValueError("prompt: must not be empty")
        if self.max_model_len is not None and len(token_ids) + sampling.max_tokens > self.max_model_len:
            raise ValueError(
                f"prompt: {len(token_ids)} prompt tokens + max_tokens {sampling.max_tokens} exceed the model's "
                f"context of {self.max_model_len} tokens"
            )
        return Request.new(
            token_ids,
            sampling,
            priority=priority,
            slo_ttft_s=slo_ttft_s,
            request_id=request_id,
            arrival_time=time.time(),
            prompt=text,
        )

    async def submit(self, request: Request) -> RequestHandle:
        """Dispatch ``request`` and hand it to its instance; tokens arrive in ``handle.queue``."""
        handle = RequestHandle(request, asyncio.Queue(), start=time.perf_counter())
        handle.last_progress = time.monotonic()
        self._active[request.request_id] = handle
        try:
            t0 = time.perf_counter()
            decision = await self.dispatcher.dispatch(
                request_id=request.request_id,
                num_prompt_tokens=request.num_prompt_tokens,
                priority=int(request.priority),
                arrival_time=request.arrival_time,
            )
            handle.dispatch_s = time.perf_counter() - t0
            if decision.get("status") != "OK":
                raise NoInstanceError(decision.get("error", "no instance available"))
            handle.instance_id, handle.address = decision["instance_id"], decision["address"]
            request.instance_id = handle.instance_id
            reply = await self.server.rpc(handle.address).llumnix_add_request(
                request=to_serialize(request), frontend=self.address
            )
            if reply.get("status") != "OK":
                raise RequestFailed(reply.get("error", "the instance refused the request"))
        except BaseException:
            self._active.pop(request.request_id, None)
            raise
        return handle

    async def chunks(self, handle: RequestHandle) -> AsyncIterator[StreamChunk]:
        """Yield the request's chunks until it finishes; aborts it if the consumer stops early."""
        try:
            while True:
                item = await handle.queue.get()
                if isinstance(item, Exception):
                    raise item
                yield item
                if item.finished:
                    return
        finally:
            if not handle.finished and handle.error is None:
                await self.abort(handle)

    async def generate(self, request: Request) -> Completion:
        handle = await self.submit(request)
        async for _ in self.chunks(handle):
            pass
        return self.completion(handle)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        handle = await self.submit(request)
        async for chunk in self.chunks(handle):
            yield chunk

    async def abort(self, handle: RequestHandle) -> None:
        """Stop generating (client went away). Safe to call twice."""
        if self._active.pop(handle.request_id, None) is None:
            return
        handle.finished, handle.finish_reason = True, "abort"
        self._record_finished(handle)  # the scheduler forgets where it lived; metrics count the abort
        try:
            if handle.address:
                await self.server.rpc(handle.address).llumnix_abort(request_id=handle.request_id)
            # It may have migrated since (even before its first token there): the scheduler knows where.
            await self.scheduler.llumnix_abort(request_id=handle.request_id)
        except Exception as exc:  # the instance may be gone; nothing left to stop
            logger.debug("abort of %s failed: %s", handle.request_id, exc)

    def completion(self, handle: RequestHandle) -> Completion:
        times = handle.token_times
        arrival = handle.start
        ttft = times[0] - arrival if times else None
        tpot = (times[-1] - times[0]) / (len(times) - 1) if len(times) > 1 else None
        return Completion(
            request_id=handle.request_id,
            text="".join(handle.text_parts),
            token_ids=list(handle.token_ids),
            finish_reason=handle.finish_reason,
            num_prompt_tokens=handle.request.num_prompt_tokens,
            priority=int(handle.request.priority),
            instances=list(handle.instances),
            ttft=ttft,
            tpot=tpot,
            e2e=(times[-1] - arrival) if times else None,
            dispatch_s=handle.dispatch_s,
        )

    # -- token reception -----------------------------------------------------------------------------
    async def _token_stream(self, comm: Any) -> None:
        await self.server.handle_stream(comm)

    def _on_tokens(self, messages: list[dict]) -> None:
        now = time.perf_counter()
        for msg in messages:
            handle = self._active.get(msg["rid"])
            if handle is None:
                continue  # aborted, failed, or a duplicate after completion
            if handle.dropped_copies and msg.get("inst") in handle.dropped_copies:
                continue  # the end of a duplicate copy we stopped (its "abort" must not end the request)
            handle.last_progress = time.monotonic()
            if "error" in msg:
                self._fail(handle, f"instance {msg.get('inst')}: {msg['error']}")
                continue
            start = msg["i"]
            if start > handle.next_index:
                handle.pending[start] = msg  # an earlier batch (from the migration source) is still in flight
                continue
            self._deliver(handle, msg, now)
            while handle.next_index in handle.pending and not handle.finished:
                self._deliver(handle, handle.pending.pop(handle.next_index), now)

    def _deliver(self, handle: RequestHandle, msg: dict, now: float) -> None:
        start, ids = msg["i"], msg["ids"]
        skip = handle.next_index - start
        if skip >= len(ids) and not (msg["done"] and skip == len(ids)):
            self._drop_duplicate_copy(handle, msg.get("inst"))
            return  # already delivered
        new_ids = ids[skip:] if skip > 0 else ids
        text = msg["text"] if skip <= 0 else self._decode(new_ids)
        inst = msg.get("inst")
        if inst and (not handle.instances or handle.instances[-1] != inst):
            handle.instances.append(inst)
        handle.next_index += len(new_ids)
        handle.token_ids.extend(new_ids)
        handle.text_parts.append(text)
        handle.token_times.extend([now] * len(new_ids))
        finished = bool(msg["done"])
        if finished:
            handle.finished, handle.finish_reason = True, msg.get("reason")
        chunk = StreamChunk(handle.request_id, start + max(skip, 0), new_ids, text, finished, msg.get("reason"), inst)
        handle.queue.put_nowait(chunk)
        if finished:
            self._active.pop(handle.request_id, None)
            self._record_finished(handle)

    def _drop_duplicate_copy(self, handle: RequestHandle, inst: str | None) -> None:
        """Tokens the client already has, from another instance than the one it follows: a second live copy.

        That happens when a migration's commit reached the destination but its answer did not reach the source,
        which then resumed the request (and could not reach the destination to undo the commit, or did so only
        after the destination had streamed some tokens). Both copies yield the same tokens (sampling is a pure
        function of seed and position), so the client never sees the difference. The copy that stays is the
        source's, as in the migration protocol and the scheduler's records: the one on the instance the request
        joined last is stopped, and whatever it still sends is ignored.
        """
        follow = handle.instances[-1] if handle.instances else None
        if not inst or not follow or inst == follow or self.server is None:
            return
        if inst in handle.dropped_copies or follow in handle.dropped_copies:
            return  # already settled; the surviving copy is catching up
        first = {}
        for i, name in enumerate(handle.instances):
            first.setdefault(name, i)
        victim, survivor = (inst, follow) if first.get(inst, len(first) + 1) > first[follow] else (follow, inst)
        handle.dropped_copies.add(victim)
        logger.warning("request %s runs on %s and %s; stopping the copy on %s", handle.request_id, follow, inst, victim)
        task = asyncio.ensure_future(self._abort_copy(handle.request_id, victim, survivor))
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _abort_copy(self, request_id: str, instance_id: str, survivor: str | None) -> None:
        try:
            await self.scheduler.llumnix_abort(request_id=request_id, instance_id=instance_id, survivor=survivor)
        except Exception as exc:  # the instance or scheduler may be gone: the copy then dies with it
            logger.debug("stopping the copy of %s on %s failed: %s", request_id, instance_id, exc)

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids) if self.tokenizer is not None else ""
        except Exception:
            return ""

    def _fail(self, handle: RequestHandle, message: str) -> None:
        self._active.pop(handle.request_id, None)
        handle.error, handle.finish_reason = message, "error"
        handle.queue.put_nowait(RequestFailed(message))
        self._record_finished(handle)

    # -- reporting and health ------------------------------------------------------------------------
    def _record_finished(self, handle: RequestHandle) -> None:
        done = self.completion(handle)
        self._finished_reports.append(
            {
                "request_id": done.request_id,
                "priority": done.priority,
                "finish_time": time.time(),
                "ttft": done.ttft,
                "tpot": done.tpot,
                "e2e": done.e2e,
                "num_output_tokens": len(done.token_ids),
                "num_migrations": done.num_migrations,
                "finish_reason": done.finish_reason,
                "slo_ttft_s": handle.request.slo_ttft_s,
            }
        )
        if self.on_finished is not None:
            try:
                self.on_finished(done)
            except Exception:
                logger.exception("on_finished callback failed")

    async def _flush_reports(self) -> None:
        if not self._finished_reports or self.server is None:
            return
        items, self._finished_reports = self._finished_reports, []
        try:
            await self.scheduler.llumnix_request_finished(items=items)
        except Exception as exc:
            logger.debug("could not report finished requests: %s", exc)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            await self._flush_reports()

    async def _watchdog(self) -> None:
        """Fail requests whose instance vanished (worker died) instead of letting callers hang."""
        while True:
            await asyncio.sleep(STALL_CHECK_S / 2)
            now = time.monotonic()
            stalled = [h for h in self._active.values() if now - h.last_progress > STALL_CHECK_S and h.address]
            if not stalled:
                continue
            try:
                rows = await self.scheduler.llumnix_instances()
            except Exception:
                continue
            alive = {row["instance_id"] for row in rows}
            for handle in stalled:
                current = handle.instances[-1] if handle.instances else handle.instance_id
                if current not in alive and handle.request_id in self._active:
                    self._fail(handle, f"instance {current} left the cluster while serving this request")


def _reachable_host(scheduler_address: str) -> str:
    """An interface of this machine that the scheduler's workers can reach."""
    host = scheduler_address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    try:
        return get_ip(host)
    except Exception:
        return "0.0.0.0"
