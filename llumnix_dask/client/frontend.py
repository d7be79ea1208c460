"""The async frontend: turns prompts into requests, dispatches them, and receives their token streams.

A :class:`Frontend` lives on one event loop (the Cluster's Dask loop). It runs a small Dask ``Server``
that workers open token streams to (see :mod:`llumnix_dask.wire.frontend_api`), asks the global scheduler
for an instance, hands the request straight to that worker, and re-orders token messages by index so a
stream that hops instances during a live migration reaches the caller intact, each token once, in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any, AsyncIterator, Callable, Sequence

from distributed.core import Server
from distributed.utils import get_ip

from llumnix_dask.client.dispatch import DispatchClient
from llumnix_dask.client.errors import NoInstanceError, Overloaded, RequestFailed
from llumnix_dask.client.health import Health
from llumnix_dask.client.intake import check_fits, check_text, prompt_bound_tokens
from llumnix_dask.client.records import Completion, RequestHandle, StreamChunk
from llumnix_dask.config import FrontendConfig
from llumnix_dask.request import Priority, Request, SamplingParams
from llumnix_dask.wire import call, handler
from llumnix_dask.wire import scheduler_api as api
from llumnix_dask.wire import worker_api as instance_api
from llumnix_dask.wire.frontend_api import OPEN_TOKEN_STREAM_OP, TokenBatch, TokenMessage

logger = logging.getLogger(__name__)

# Aborted requests remembered, so that tokens a copy still sends for them get that copy stopped.
_CLOSED_MEMORY = 4096


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
        listen_args: dict | None = None,
        on_finished: Callable[[Completion], None] | None = None,
        max_model_len: int | None = None,
        config: FrontendConfig | None = None,
    ) -> None:
        self.scheduler_address = scheduler_address
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.config = config or FrontendConfig()
        self._host = host
        self._connection_args = connection_args or {}
        self._listen_args = listen_args or {}
        self.on_finished = on_finished
        self.server: Server | None = None
        self.address: str | None = None
        self._active: dict[str, RequestHandle] = {}
        self._closed_ids: collections.OrderedDict[str, set[str]] = collections.OrderedDict()
        self._finished_reports: list[api.FinishedRequest] = []
        self._tasks: list[asyncio.Task] = []
        self._comm_instances: dict[int, set[str]] = {}  # token-stream comm -> instances seen on it
        self.health = Health(self, self.config)

    # -- lifecycle -----------------------------------------------------------------------------------
    async def start(self) -> "Frontend":
        self.server = Server(
            {OPEN_TOKEN_STREAM_OP: self._token_stream},
            stream_handlers={TokenBatch.op: handler(TokenBatch, self._on_batch, extras=("comm_key",))},
            connection_args=self._connection_args,
        )
        host = self._host or _reachable_host(self.scheduler_address)
        protocol = self.scheduler_address.split("://", 1)[0] if "://" in self.scheduler_address else "tcp"
        await self.server.start()
        await self.server.listen(f"{protocol}://{host}:0", **self._listen_args)
        self.address = self.server.address
        self.dispatcher = DispatchClient(lambda: self.scheduler)
        self._tasks = [
            asyncio.create_task(self._report_loop(), name="llumnix-frontend-reports"),
            asyncio.create_task(self.health.run(), name="llumnix-frontend-health"),
        ]
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for handle in list(self._active.values()):
            self.fail(handle, "the frontend closed")
        await self._flush_reports()
        if self.server is not None:
            await self.server.close()

    @property
    def scheduler(self) -> Any:
        return self.server.rpc(self.scheduler_address)

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
        text = None
        if isinstance(prompt, str):
            text = prompt
            check_text(prompt)
            if self.tokenizer is None:
                raise ValueError("prompt: this frontend has no tokenizer; pass token ids")
            check_fits(prompt_bound_tokens(prompt, self.tokenizer), sampling.max_tokens, self.max_model_len, at_least=True)
            token_ids = list(self.tokenizer.encode(prompt))
        else:
            token_ids = [int(t) for t in prompt]
        if not token_ids:
            raise ValueError("prompt: must not be empty")
        check_fits(len(token_ids), sampling.max_tokens, self.max_model_len)
        return Request.new(
            token_ids, sampling, priority=priority, slo_ttft_s=slo_ttft_s, request_id=request_id,
            arrival_time=time.time(), prompt=text,
        )

    async def submit(self, request: Request) -> RequestHandle:
        """Dispatch ``request`` and hand it to its instance; tokens arrive in ``handle.queue``."""
        if len(self._active) >= self.config.max_active_requests:
            raise Overloaded(f"this frontend already has {len(self._active)} requests in flight", retry_after_s=1.0)
        handle = RequestHandle(request, asyncio.Queue(), start=time.perf_counter())
        handle.last_progress = time.monotonic()
        self._active[request.request_id] = handle
        try:
            await self.send(handle, request)
        except BaseException:
            self._active.pop(request.request_id, None)
            raise
        return handle

    async def send(self, handle: RequestHandle, request: Request) -> None:
        """Dispatch ``request`` (new, or a recovered continuation) and add it on the chosen instance."""
        t0 = time.perf_counter()
        decision = await self.dispatcher.place(
            request_id=request.request_id,
            num_prompt_tokens=request.num_tokens,
            priority=int(request.priority),
            arrival_time=request.arrival_time,
        )
        handle.dispatch_s += time.perf_counter() - t0
        if decision.status == "overloaded":
            raise Overloaded(decision.error or "the cluster is overloaded", decision.retry_after_s or 1.0)
        if decision.status != "OK":
            raise NoInstanceError(decision.error or "no instance available")
        handle.instance_id, handle.address = decision.instance_id, decision.address
        request.instance_id = handle.instance_id
        reply = await call(self.server.rpc(handle.address),
                           instance_api.AddRequest(request=request, frontend=self.address), instance_api.Added)
        if reply.status != "OK":
            raise RequestFailed(reply.error or "the instance refused the request")

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
        self._remember_closed(handle.request_id)
        self._record_finished(handle)  # the scheduler forgets where it lived; metrics count the abort
        try:
            if handle.address:
                await call(self.server.rpc(handle.address), instance_api.AbortRequest(request_id=handle.request_id))
            # It may have migrated since (even before its first token there): the scheduler knows where.
            await call(self.scheduler, api.AbortWhere(request_id=handle.request_id))
        except Exception as exc:  # the instance may be gone; nothing left to stop
            logger.debug("abort of %s failed: %s", handle.request_id, exc)

    def _remember_closed(self, request_id: str) -> None:
        self._closed_ids[request_id] = set()
        while len(self._closed_ids) > _CLOSED_MEMORY:
            self._closed_ids.popitem(last=False)

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
            max_token_gap_s=max((b - a for a, b in zip(times, times[1:])), default=None),
        )

    # -- token reception -----------------------------------------------------------------------------
    async def _token_stream(self, comm: Any) -> None:
        key = id(comm)
        self._comm_instances[key] = set()
        try:
            await self.server.handle_stream(comm, extra={"comm_key": key})
        finally:
            self.health.stream_closed(self._comm_instances.pop(key, set()))

    def _on_batch(self, batch: TokenBatch, comm_key: int | None = None) -> None:
        self._on_tokens(batch.messages, comm_key)

    def _on_tokens(self, messages: list[TokenMessage], comm_key: int | None = None) -> None:
        now = time.perf_counter()
        seen = self._comm_instances.get(comm_key) if comm_key is not None else None
        for msg in messages:
            inst = msg.instance_id
            if seen is not None and inst:
                seen.add(inst)
            handle = self._active.get(msg.request_id)
            if handle is None:
                self._stop_orphan(msg)
                continue
            handle.last_progress = time.monotonic()
            if msg.error is not None:
                if inst not in handle.order.ignored:
                    self.fail(handle, f"instance {inst}: {msg.error}")
                continue
            self.deliver(handle, msg, now)

    def active(self) -> list[RequestHandle]:
        """The requests in flight."""
        return list(self._active.values())

    def is_active(self, handle: RequestHandle) -> bool:
        return self._active.get(handle.request_id) is handle

    def deliver(self, handle: RequestHandle, msg: TokenMessage, now: float | None = None) -> None:
        """Put a token message (from an instance, or replayed) into the request's ordered stream."""
        now = time.perf_counter() if now is None else now
        accepted = handle.order.accept(msg, now)
        if accepted.stop_copy is not None:
            victim, survivor = accepted.stop_copy
            logger.warning("request %s runs on %s and %s; stopping the copy on %s",
                           handle.request_id, victim, survivor, victim)
            self._spawn(self._abort_copy(handle.request_id, victim, survivor))
        for chunk in accepted.chunks:
            text = chunk.text if chunk.text is not None else self._decode(chunk.token_ids)
            handle.token_ids.extend(chunk.token_ids)
            handle.text_parts.append(text)
            handle.token_times.extend([now] * len(chunk.token_ids))
            if chunk.finished:
                handle.finished, handle.finish_reason = True, chunk.finish_reason
            handle.queue.put_nowait(StreamChunk(handle.request_id, chunk.index, chunk.token_ids, text,
                                                chunk.finished, chunk.finish_reason, chunk.instance_id))
            if chunk.finished:
                self._active.pop(handle.request_id, None)
                self._record_finished(handle)

    def _stop_orphan(self, msg: TokenMessage) -> None:
        """Tokens for a request this frontend closed: a copy is still generating somewhere (it moved while
        its abort was on the way); stop it where it is, once."""
        told = self._closed_ids.get(msg.request_id)
        inst = msg.instance_id
        if told is None or not inst or inst in told or msg.finished:
            return
        told.add(inst)
        self._spawn(self._abort_copy(msg.request_id, inst, None))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)

    async def _abort_copy(self, request_id: str, instance_id: str, survivor: str | None) -> None:
        try:
            await call(self.scheduler, api.AbortWhere(request_id=request_id, instance_id=instance_id, survivor=survivor))
        except Exception as exc:  # the instance or scheduler may be gone: the copy then dies with it
            logger.debug("stopping the copy of %s on %s failed: %s", request_id, instance_id, exc)

    def _decode(self, ids: list[int]) -> str:
        try:
            return self.tokenizer.decode(ids) if self.tokenizer is not None else ""
        except Exception:
            return ""

    def fail(self, handle: RequestHandle, message: str, kind: type[RequestFailed] = RequestFailed) -> None:
        self._active.pop(handle.request_id, None)
        handle.error, handle.finish_reason = message, "error"
        handle.queue.put_nowait(kind(message))
        self._record_finished(handle)

    # -- reporting -----------------------------------------------------------------------------------
    def _record_finished(self, handle: RequestHandle) -> None:
        done = self.completion(handle)
        self._finished_reports.append(api.FinishedRequest(
            request_id=done.request_id, priority=done.priority, finish_time=time.time(), ttft=done.ttft,
            tpot=done.tpot, e2e=done.e2e, num_output_tokens=len(done.token_ids),
            num_migrations=done.num_migrations, finish_reason=done.finish_reason,
            slo_ttft_s=handle.request.slo_ttft_s,
        ))
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
            await call(self.scheduler, api.ReportFinished(items=items))
        except Exception as exc:
            logger.debug("could not report finished requests: %s", exc)

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            await self._flush_reports()

def _reachable_host(scheduler_address: str) -> str:
    """An interface of this machine that the scheduler's workers can reach."""
    host = scheduler_address.split("://", 1)[-1].rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1"):
        return "127.0.0.1"
    try:
        return get_ip(host)
    except Exception:
        return "0.0.0.0"
