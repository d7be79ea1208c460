"""Cluster: many engine instances on Dask, one global scheduler, one simple API.

    >>> from llumnix_dask import Cluster
    >>> with Cluster(n_instances=2) as cluster:                     # doctest: +SKIP
    ...     print(cluster.generate("Hello", max_tokens=8))
    ...     for piece in cluster.stream("Once upon a time", max_tokens=16):
    ...         print(piece, end="")

``Cluster(n_instances, model, backend)`` starts an embedded Dask ``LocalCluster`` (one worker process per
instance) with the global scheduler plugin and the instance plugin; ``Cluster(address="tcp://...")``
attaches to a running Dask scheduler (started with ``--preload llumnix_dask.preload.scheduler``, or the plugins are
installed on attach). Every call works from scripts and from Jupyter: the Cluster runs its frontend on the
Dask client's own event loop thread and blocking calls wait on it.
Scripts that start a Cluster need the usual ``if __name__ == "__main__":`` guard (worker processes are
spawned).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import time
from typing import Any, AsyncIterator, Coroutine, Iterator, Sequence

from llumnix_dask.cluster_start import (
    install_instances,
    refuse_spawned_reimport,
    start_local_cluster,
    with_cpu_threads,
    workers_preloaded,
)
from llumnix_dask.cluster_views import ClusterViews
from llumnix_dask.config import EngineConfig, FrontendConfig, MigrationConfig, PolicyConfig
from llumnix_dask.request import Priority, Request, SamplingParams
from llumnix_dask.client.bridge import iterate_across_loops, iterate_in_thread
from llumnix_dask.client.frontend import Frontend
from llumnix_dask.client.intake import check_fits, check_text, prompt_bound_tokens
from llumnix_dask.client.records import Completion, StreamChunk
from llumnix_dask.client.scaling import keep_instances
from llumnix_dask.engine.tokenizer import load_tokenizer
from llumnix_dask.wire import Message, call
from llumnix_dask.wire import scheduler_api as api

logger = logging.getLogger(__name__)

def _sampling(sampling: SamplingParams | None, kwargs: dict) -> SamplingParams:
    if sampling is not None and kwargs:
        return dataclasses.replace(sampling, **kwargs)
    return sampling or SamplingParams(**kwargs)


class Cluster(ClusterViews):
    """A Llumnix cluster of engine instances on Dask.

    Parameters: ``n_instances`` engine instances (one Dask worker each; one GPU each when there are
    GPUs), ``model`` (an HF checkpoint directory; None = the built-in tiny model), ``backend``
    ("nano", "vllm" or "sim"), ``policy`` (:class:`PolicyConfig`), ``engine`` (a full :class:`EngineConfig`,
    overrides model/backend), ``address`` (attach to an existing scheduler instead of starting one),
    ``frontend`` (:class:`FrontendConfig`: recovery of a dead instance's requests, limits), ``security``
    (a ``distributed.security.Security`` for TLS between every process; ``True`` = temporary certificates
    for the embedded cluster).
    """

    def __init__(
        self,
        n_instances: int = 4,
        model: str | None = None,
        backend: str = "nano",
        *,
        address: str | None = None,
        policy: PolicyConfig | None = None,
        engine: EngineConfig | None = None,
        migration: MigrationConfig | None = None,
        load_report_interval_s: float = 0.01,
        dashboard_address: str | None = ":8787",
        engine_factory: Any = None,
        tokenizer: Any = None,
        timeout: float = 300.0,
        silence_logs: int = logging.WARNING,
        frontend: FrontendConfig | None = None,
        security: Any = None,
    ) -> None:
        from distributed import Client

        from llumnix_dask.scheduler.plugin import GlobalSchedulerPlugin

        if not isinstance(n_instances, int) or n_instances < 1:
            raise ValueError(f"n_instances: must be an integer >= 1, got {n_instances!r}")
        if address is None:
            refuse_spawned_reimport()
        if security is True:
            from distributed.security import Security

            security = Security.temporary()
        self.security = security
        self.frontend_config = frontend or FrontendConfig()
        self.engine_config = engine or EngineConfig(backend=backend, model=model)
        if address is None:
            self.engine_config = with_cpu_threads(self.engine_config, n_instances)
        self.timeout = timeout
        self._local = None
        self._adaptive: Any = None  # the LlumnixAdaptive of adapt()
        self._closed = False
        if address is None:
            if dashboard_address is not None:
                from llumnix_dask.widgets.dashboard import register_page

                register_page()  # the embedded scheduler's dashboard gets the /llumnix page
            self._local = start_local_cluster(n_instances, dashboard_address, silence_logs, security)
            self.client = Client(self._local, security=security)
        else:
            self.client = Client(address, timeout=timeout, security=security)
        self._loop: asyncio.AbstractEventLoop = self.client.loop.asyncio_loop
        try:
            self.client.register_plugin(GlobalSchedulerPlugin(policy or PolicyConfig()))
            if address is not None and policy is not None:
                self.set_policy(**dataclasses.asdict(policy))
            if address is not None:
                self.client.wait_for_workers(1, timeout=timeout)  # a plain scheduler needs workers to serve
            if address is None or not (self._instance_rows() or workers_preloaded(self.client)):
                install_instances(self.client, self.engine_config, migration, local=address is None,
                                  load_report_interval_s=load_report_interval_s, engine_factory=engine_factory)
            rows = self._wait_for_instances(lambda rows: len(rows) >= (n_instances if address is None else 1), timeout)
            self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(self.engine_config)
            lens = [r.max_model_len for r in rows if r.max_model_len]
            self.max_model_len: int | None = min(lens) if lens else None
            self.frontend: Frontend = self._run(self._start_frontend())
            self.target_instances = n_instances if address is None else None
            if self._local is not None:
                self._keeper = asyncio.run_coroutine_threadsafe(keep_instances(self), self._loop)
        except BaseException:
            self.close()
            raise

    async def _start_frontend(self) -> Frontend:
        args = {}
        if self.security is not None:
            args = {"connection_args": self.security.get_connection_args("client"),
                    "listen_args": self.security.get_listen_args("client")}
        return await Frontend(self.client.scheduler.address, tokenizer=self.tokenizer, max_model_len=self.max_model_len,
                              config=self.frontend_config, **args).start()

    # -- plumbing ------------------------------------------------------------------------------------
    def _run(self, coro: Coroutine, timeout: float | None = None) -> Any:
        """Run a coroutine on the cluster's event loop and wait for it (any thread, even inside Jupyter)."""
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"llumnix cluster call timed out after {timeout} s") from None

    def _scheduler_call(self, msg: Message, reply: Any = None) -> Any:
        """Send a :mod:`~llumnix_dask.wire.scheduler_api` message to the global scheduler and wait for the
        answer (as ``reply``, a type)."""
        return self._run(call(self.client.scheduler, msg, reply), self.timeout)

    def _instance_rows(self) -> list[api.InstanceRow]:
        try:
            return self._scheduler_call(api.GetInstances(), list[api.InstanceRow])
        except Exception:
            return []

    def _wait_for_instances(self, ready: Any, timeout: float) -> list[api.InstanceRow]:
        deadline = time.monotonic() + timeout
        while True:
            rows = self._instance_rows()
            if ready(rows):
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"engine instances not ready after {timeout:.0f} s: {len(rows)} registered")
            time.sleep(0.05)

    def _make_request(self, prompt: Any, sampling: SamplingParams, priority: Any, slo: float | None) -> Any:
        return self.frontend.make_request(prompt, sampling, priority=priority, slo_ttft_s=slo)

    async def amake_request(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams | None = None,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo: float | None = None,
        request_id: str | None = None,
        **sampling_kwargs: Any,
    ) -> Request:
        """A validated :class:`Request` for ``prompt`` without blocking the caller's event loop (a long prompt
        is tokenized in a helper process); pass it to :meth:`astream_request` / :meth:`agenerate_request`."""
        sampling = _sampling(sampling, sampling_kwargs)
        if isinstance(prompt, str) and self.tokenizer is not None and hasattr(self.tokenizer, "aencode"):
            check_text(prompt)
            check_fits(prompt_bound_tokens(prompt, self.tokenizer), sampling.max_tokens, self.max_model_len, at_least=True)
            prompt = await self.tokenizer.aencode(prompt, self.frontend_config.tokenize_in_process_above_bytes)
        return self.frontend.make_request(prompt, sampling, priority=priority, slo_ttft_s=slo, request_id=request_id)

    # -- requests ------------------------------------------------------------------------------------
    def submit(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams | None = None,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo: float | None = None,
        **sampling_kwargs: Any,
    ) -> concurrent.futures.Future:
        """Start a request; returns a ``concurrent.futures.Future`` of its :class:`Completion`."""
        request = self._make_request(prompt, _sampling(sampling, sampling_kwargs), priority, slo)
        return asyncio.run_coroutine_threadsafe(self.frontend.generate(request), self._loop)

    def generate(
        self,
        prompt: str | Sequence[int] | Sequence[str],
        sampling: SamplingParams | None = None,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo: float | None = None,
        details: bool = False,
        **sampling_kwargs: Any,
    ) -> Any:
        """Generate text for a prompt (or a list of prompts, run concurrently).

        Sampling keywords: ``max_tokens``, ``temperature``, ``top_k``, ``top_p``, ``seed``, ``stop`` ...
        ``priority="high"`` runs the request on a lightly loaded instance; ``slo`` is a TTFT target in
        seconds. Returns the text, or the :class:`Completion` (tokens, TTFT, instances) with ``details=True``.
        """
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], str):
            futures = [self.submit(p, sampling, priority=priority, slo=slo, **sampling_kwargs) for p in prompt]
            done = [f.result() for f in futures]
            return done if details else [c.text for c in done]
        completion: Completion = self.submit(prompt, sampling, priority=priority, slo=slo, **sampling_kwargs).result()
        return completion if details else completion.text

    def stream(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams | None = None,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo: float | None = None,
        details: bool = False,
        **sampling_kwargs: Any,
    ) -> Iterator[Any]:
        """Yield text pieces as they are generated (or :class:`StreamChunk` objects with ``details=True``).

        Stopping the iteration early aborts the request.
        """
        request = self._make_request(prompt, _sampling(sampling, sampling_kwargs), priority, slo)
        for chunk in iterate_in_thread(lambda: self.frontend.stream(request), self._loop):
            yield chunk if details else chunk.text

    async def astream(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams | None = None,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo: float | None = None,
        details: bool = False,
        **sampling_kwargs: Any,
    ) -> AsyncIterator[Any]:
        """Async version of :meth:`stream` for any event loop (Jupyter, FastAPI)."""
        request = self._make_request(prompt, _sampling(sampling, sampling_kwargs), priority, slo)
        async for chunk in iterate_across_loops(self.frontend.stream(request), self._loop):
            yield chunk if details else chunk.text

    async def astream_request(self, request: Request) -> AsyncIterator[StreamChunk]:
        """The chunks of a request made by :meth:`amake_request`, from any event loop."""
        async for chunk in iterate_across_loops(self.frontend.stream(request), self._loop):
            yield chunk

    async def agenerate_request(self, request: Request) -> Completion:
        """The :class:`Completion` of a request made by :meth:`amake_request`, from any event loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.frontend.generate(request), self._loop))

    async def agenerate(
        self,
        prompt: str | Sequence[int],
        sampling: SamplingParams | None = None,
        *,
        priority: Priority | int | str = Priority.NORMAL,
        slo: float | None = None,
        **sampling_kwargs: Any,
    ) -> Completion:
        """Async: the :class:`Completion` of one request, awaitable from any event loop."""
        request = self._make_request(prompt, _sampling(sampling, sampling_kwargs), priority, slo)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self.frontend.generate(request), self._loop))

    # -- cluster management --------------------------------------------------------------------------
    def scale(self, n: int, timeout: float | None = None) -> None:
        """Run ``n`` instances. Scaling down drains the chosen instances by live migration first."""
        from llumnix_dask.client.scaling import scale_to

        self._run(scale_to(self, int(n)), timeout or self.timeout)

    def adapt(
        self,
        minimum: int = 1,
        maximum: int = 8,
        *,
        scale_up_freeness: float | None = None,
        scale_down_freeness: float | None = None,
        interval_s: float | None = None,
        patience_s: float | None = None,
    ) -> PolicyConfig:
        """Auto-scale between ``minimum`` and ``maximum`` instances, keeping average freeness in the band.

        The global scheduler's scaling policy decides; Dask's adaptive deployment
        (:class:`~llumnix_dask.client.adaptive.LlumnixAdaptive`) starts workers and retires drained ones.
        """
        from llumnix_dask.client.adaptive import LlumnixAdaptive

        if self._local is None:
            raise RuntimeError(
                "this Cluster is attached to an external Dask scheduler: adapt the Dask cluster manager that owns "
                "its workers instead, e.g. dask_cluster.adapt(Adaptive=llumnix_dask.client.adaptive.LlumnixAdaptive)"
            )
        knobs: dict[str, Any] = {"scaling_enabled": True, "min_instances": minimum, "max_instances": maximum}
        for key, value in (
            ("scale_up_freeness", scale_up_freeness),
            ("scale_down_freeness", scale_down_freeness),
            ("scaling_interval_s", interval_s),
            ("scaling_patience_s", patience_s),
        ):
            if value is not None:
                knobs[key] = value
        policy = self.set_policy(**knobs)
        if self._adaptive is not None:
            self._adaptive.stop(reason="adapt called again")
        self._adaptive = self._local.adapt(Adaptive=LlumnixAdaptive, minimum=minimum, maximum=maximum,
                                           interval=max(0.1, policy.scaling_interval_s))
        return policy

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._adaptive is not None:
            self._adaptive.stop(reason="the llumnix Cluster closed")
        if getattr(self, "_keeper", None) is not None:
            self._keeper.cancel()
        frontend = getattr(self, "frontend", None)
        if frontend is not None:
            try:
                self._run(frontend.close(), 10)
            except Exception:
                logger.debug("frontend close failed", exc_info=True)
        if getattr(self, "tokenizer", None) is not None and hasattr(self.tokenizer, "close"):
            self.tokenizer.close()
        try:
            self.client.close()
        finally:
            if self._local is not None:
                self._local.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
