"""The llumlet: the per-instance agent that drives one engine on a Dask worker.

It runs the engine's step loop in its own thread (an engine step on the worker's event loop would stall
every Dask message for tens of milliseconds), hands token batches to the event loop to stream them to the
frontend that sent each request, and pushes the instance's load to the global scheduler at most every
``load_report_interval_s``.

Token messages carry the index of their first token in the request's output, so a frontend that hears
from two instances around a live migration (the source's last tokens and the destination's first ones)
can put them in order and drop duplicates: one :class:`~llumnix_dask.wire.frontend_api.TokenMessage` per
request per step (with ``error`` set when the request failed here).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from llumnix_dask.engine.base import EngineBackend, MigrationState
from llumnix_dask.engine.fair_lock import FairLock
from llumnix_dask.policy.load import InstanceLoad
from llumnix_dask.request import Request
from llumnix_dask.wire.frontend_api import TokenMessage
from llumnix_dask.wire.worker_api import Progress

logger = logging.getLogger(__name__)

# The frontend's token-server address rides in the request's metadata, so it travels with a migration.
FRONTEND_KEY = "llumnix_frontend"
# A step loop that keeps failing gives up on its requests after this many consecutive errors.
MAX_CONSECUTIVE_STEP_ERRORS = 3
# Output tokens of this many recently finished requests are kept, so a frontend that missed a message can
# ask for them again (``replay``).
RECENT_OUTPUTS = 2048

TokenSink = Callable[[dict[str, list[dict]]], None]  # {frontend address: [token messages]}, on the event loop


@dataclasses.dataclass
class _Stream:
    """Where a request held here streams to: its frontend and the index of its next output token."""

    request: Request
    frontend: str | None
    next_index: int
LoadSink = Callable[[InstanceLoad], None]  # on the event loop


class Llumlet:
    """Drives ``engine`` in a thread; tokens go to ``send_tokens``, load reports to ``report_load``.

    Both sinks are called on ``loop`` (the worker's event loop) via ``call_soon_threadsafe``.
    """

    def __init__(
        self,
        engine: EngineBackend,
        *,
        loop: asyncio.AbstractEventLoop,
        send_tokens: TokenSink,
        report_load: LoadSink,
        load_report_interval_s: float = 0.01,
        idle_report_interval_s: float = 1.0,
    ) -> None:
        self.engine = engine
        self.instance_id = engine.instance_id
        self.loop = loop
        self._send_tokens = send_tokens
        self._report_load = report_load
        self.load_report_interval_s = load_report_interval_s
        self.idle_report_interval_s = idle_report_interval_s
        self._inbox: collections.deque[tuple[str, Any]] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards _streams / _recent (step thread vs event loop)
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        # Held over a step *and* the building of its token messages, and by a migration's pause: a request
        # can only leave between steps whose tokens are all on their way to the frontend.
        self._step_lock = FairLock()
        self._recent: collections.OrderedDict[str, tuple[list[int], str | None]] = collections.OrderedDict()
        self.migration_engine = _PauseBetweenSteps(engine, self._step_lock)
        self.migrations_in_flight = 0
        self.num_steps = 0
        self.num_tokens = 0
        self._last_report = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"llumlet-{self.instance_id}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests (called on the event loop) ---------------------------------------------------------
    def add_request(self, request: Request, frontend: str | None) -> None:
        """Queue a request for the step thread; tokens will stream to ``frontend``."""
        if frontend:
            request.metadata[FRONTEND_KEY] = frontend
        self._inbox.append(("add", request))
        self._wake.set()

    def abort(self, request_id: str) -> None:
        self._inbox.append(("abort", request_id))
        self._wake.set()

    def adopt_migrated(self, state: MigrationState) -> None:
        """A migrated request was committed here: continue its stream at the next token index."""
        self.adopt_request(state.request)

    def adopt_request(self, req: Request) -> None:
        """A request that arrived by migration (running or queued) streams on from ``len(output)``."""
        self._track(req)
        self._wake.set()

    def _track(self, req: Request) -> None:
        with self._lock:
            self._streams[req.request_id] = _Stream(req, req.metadata.get(FRONTEND_KEY), len(req.output_token_ids))

    def forget(self, request_id: str) -> None:
        """The request left this instance by migration: its stream continues from the destination."""
        with self._lock:
            self._streams.pop(request_id, None)

    def wake(self) -> None:
        self._wake.set()

    def replay(self, request_id: str, start: int) -> Progress:
        """Output tokens ``start, start+1, ...`` of a request held here or finished here recently.

        A frontend asks when a token message never arrived (a bounded wait, then this): the request's output
        list on the instance that holds it has every token, including those made before a migration.
        """
        with self._lock:
            stream = self._streams.get(request_id)
            recent = self._recent.get(request_id)
        if stream is not None:
            ids = list(stream.request.output_token_ids[start:stream.next_index])  # what was sent so far
            return Progress(start=start, ids=ids, instance_id=self.instance_id)
        if recent is None:
            return Progress(status="unknown")
        ids, reason = recent
        return Progress(start=start, ids=list(ids[start:]), done=True, reason=reason, instance_id=self.instance_id)

    def load(self) -> InstanceLoad:
        load = self.engine.load()
        if self.migrations_in_flight and not load.migrating:
            load = dataclasses.replace(load, migrating=True)
        return load

    # -- the step thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        errors = 0
        was_busy = False
        while not self._stop.is_set():
            self._drain_inbox()
            if not self.engine.has_work():
                if was_busy:
                    self._push_load(force=True)  # the scheduler should see the instance go idle at once
                    was_busy = False
                if not self._wake.wait(self.idle_report_interval_s):
                    self._push_load(force=True)  # heartbeat while idle
                self._wake.clear()
                continue
            was_busy = True
            with self._step_lock:
                try:
                    outputs = self.engine.step()
                    errors = 0
                except Exception as exc:  # an engine bug: fail loudly, but keep the worker alive
                    errors += 1
                    logger.exception("engine step failed on %s", self.instance_id)
                    if errors >= MAX_CONSECUTIVE_STEP_ERRORS:
                        self._fail_all(f"engine step failed repeatedly: {type(exc).__name__}: {exc}")
                        errors = 0
                    continue
                self.num_steps += 1
                if outputs:
                    self._emit(outputs)
            self._push_load()

    def _drain_inbox(self) -> None:
        while self._inbox:
            kind, item = self._inbox.popleft()
            if kind == "add":
                request: Request = item
                self._track(request)
                try:
                    self.engine.add_request(request)
                except Exception as exc:  # too long for this engine, bad params: tell the client why
                    self._error(request.request_id, f"{type(exc).__name__}: {exc}")
            elif kind == "abort":
                rid = item
                if self.engine.abort(rid):
                    self._finish_aborted(rid)

    def _emit(self, outputs: list) -> None:
        by_frontend: dict[str, list[TokenMessage]] = {}
        with self._lock:
            for out in outputs:
                rid = out.request_id
                stream = self._streams.get(rid)
                if stream is None:  # adopted without adopt_request (a destination that bypassed the hook)
                    stream = self._recover_stream(rid, out)
                start = stream.next_index
                stream.next_index = start + len(out.new_token_ids)
                self.num_tokens += len(out.new_token_ids)
                if out.finished:
                    del self._streams[rid]
                    self._recent[rid] = (list(stream.request.output_token_ids), out.finish_reason)
                    while len(self._recent) > RECENT_OUTPUTS:
                        self._recent.popitem(last=False)
                if not stream.frontend:
                    continue
                by_frontend.setdefault(stream.frontend, []).append(TokenMessage(
                    rid, self.instance_id, start, list(out.new_token_ids), out.text_delta, bool(out.finished),
                    out.finish_reason))
        if by_frontend:
            self._call(self._send_tokens, by_frontend)

    def _recover_stream(self, rid: str, out: Any) -> _Stream:
        # Caller holds self._lock.
        req = self.engine.get_request(rid)
        if req is None:
            req = Request.new([0], request_id=rid)  # already gone: stream what this step produced
        start = max(0, len(req.output_token_ids) - len(out.new_token_ids))
        stream = self._streams[rid] = _Stream(req, req.metadata.get(FRONTEND_KEY), start)
        return stream

    def _error(self, rid: str, message: str) -> None:
        with self._lock:
            stream = self._streams.pop(rid, None)
        if stream is not None and stream.frontend:
            msg = TokenMessage(rid, self.instance_id, stream.next_index, error=message)
            self._call(self._send_tokens, {stream.frontend: [msg]})

    def _finish_aborted(self, rid: str) -> None:
        with self._lock:
            stream = self._streams.pop(rid, None)
        if stream is not None and stream.frontend:
            msg = TokenMessage(rid, self.instance_id, stream.next_index, [], "", True, "abort")
            self._call(self._send_tokens, {stream.frontend: [msg]})

    def _fail_all(self, message: str) -> None:
        with self._lock:
            rids = list(self._streams)
        for rid in rids:
            try:
                self.engine.abort(rid)
            except Exception:
                logger.exception("abort of %s failed", rid)
            self._error(rid, message)

    def _push_load(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_report < self.load_report_interval_s:
            return
        self._last_report = now
        try:
            load = self.load()
        except Exception:
            logger.exception("load() failed on %s", self.instance_id)
            return
        self._call(self._report_load, load)

    def _call(self, fn: Callable, *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the event loop is closed: the worker is shutting down
            pass


class _PauseBetweenSteps:
    """The engine as a migration source sees it: ``pause`` waits for the step in flight *and* the sending of
    its tokens, so the last token made on the source is never left behind when the request moves."""

    def __init__(self, engine: EngineBackend, step_lock: FairLock) -> None:
        self._engine = engine
        self._step_lock = step_lock

    def pause(self, request_id: str) -> MigrationState:
        with self._step_lock:
            return self._engine.pause(request_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)
