"""An engine in its own step-loop thread, recording every request's token stream.

The smallest host for migration experiments without the full cluster (the migration tests and
``benchmarks/migration_downtime.py``); the llumlet (``llumnix_dask.workers``) is the production host. Runners
that share one :class:`RecordedStreams` record every request's tokens in the order the engines produced them, wherever
the request was, which is the stream a client sees across migrations::

    streams = RecordedStreams()
    a, b = EngineRunner(engine_a, streams), EngineRunner(engine_b, streams)
    a.add(request)
    streams.wait_for(lambda: len(streams.tokens(request.request_id)) >= 5, timeout=10)
    ...
    a.stop(); b.stop()
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from llumnix_dask.engine.base import EngineBackend, StepOutput
from llumnix_dask.request import Request


class RecordedStreams:
    """Token streams per request id, appended in production order by any number of runners."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._tokens: dict[str, list[int]] = {}
        self._finished: dict[str, str | None] = {}
        self._by: dict[str, list[str]] = {}  # request id -> instance of each token
        self.error: BaseException | None = None

    def record(self, instance_id: str, outs: list[StepOutput]) -> None:
        with self._cond:
            for out in outs:
                self._tokens.setdefault(out.request_id, []).extend(out.new_token_ids)
                self._by.setdefault(out.request_id, []).extend([instance_id] * len(out.new_token_ids))
                if out.finished:
                    self._finished[out.request_id] = out.finish_reason
            self._cond.notify_all()

    def fail(self, exc: BaseException) -> None:
        with self._cond:
            self.error = exc
            self._cond.notify_all()

    def tokens(self, request_id: str) -> list[int]:
        with self._cond:
            return list(self._tokens.get(request_id, ()))

    def instances(self, request_id: str) -> list[str]:
        """Which instance produced each token of the stream."""
        with self._cond:
            return list(self._by.get(request_id, ()))

    def finished(self, request_id: str) -> bool:
        with self._cond:
            return request_id in self._finished

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds (re-checked after every recorded step); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                if self.error is not None:
                    raise RuntimeError("an engine step loop failed") from self.error
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True


class EngineRunner:
    """Steps ``engine`` in a daemon thread while it has work, recording its outputs into ``streams``."""

    def __init__(
        self,
        engine: EngineBackend,
        streams: RecordedStreams | None = None,
        *,
        on_step: Callable[[float, list[StepOutput]], None] | None = None,
    ):
        self.engine = engine
        self.streams = streams if streams is not None else RecordedStreams()
        self._cond = threading.Condition()
        # Held over a step and the recording of its tokens, and by pause() of ``migration_engine``: a
        # request cannot leave between producing a token and that token being recorded, so a stream
        # never shows the destination's next token before the source's last one.
        self._step_lock = threading.Lock()
        self._pause_waiters = 0  # the loop lets a waiting pause() in before its next step (no starvation)
        self._migration_engine = _RecordedPause(self)
        self._stop = False
        self.error: BaseException | None = None
        self.step_times: list[tuple[float, float, int]] = []  # (start, seconds, batch size) per step
        self._on_step = on_step
        self._thread = threading.Thread(target=self._loop, name=f"engine-{engine.instance_id}", daemon=True)
        self._thread.start()

    @property
    def migration_engine(self) -> EngineBackend:
        """The engine as a migration source should see it: ``pause`` waits until the tokens of the step
        in flight are recorded."""
        return self._migration_engine  # type: ignore[return-value]

    # -- control ---------------------------------------------------------------------------------
    def add(self, request: Request) -> None:
        self.engine.add_request(request)
        self.wake()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        self._thread.join()

    # -- loop ------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self.engine.has_work():
                    self._cond.wait(0.05)  # a migrated-in request arrives without add(): poll has_work
                if self._stop:
                    return
            with self._cond:
                while self._pause_waiters and not self._stop:
                    self._cond.wait(0.01)
            start = time.perf_counter()
            with self._step_lock:
                try:
                    outs = self.engine.step()
                except BaseException as exc:  # noqa: BLE001 - surfaced by RecordedStreams.wait_for
                    self.error = exc
                    self.streams.fail(exc)
                    return
                seconds = time.perf_counter() - start
                self.step_times.append((start, seconds, len(outs)))
                self.streams.record(self.engine.instance_id, outs)
            if self._on_step is not None:
                self._on_step(start, outs)


class _RecordedPause:
    def __init__(self, runner: EngineRunner):
        self._runner = runner
        self._engine = runner.engine

    def pause(self, request_id: str):
        runner = self._runner
        with runner._cond:
            runner._pause_waiters += 1
        try:
            with runner._step_lock:
                return self._engine.pause(request_id)
        finally:
            with runner._cond:
                runner._pause_waiters -= 1
                runner._cond.notify_all()

    def __getattr__(self, name: str):
        return getattr(self._engine, name)
