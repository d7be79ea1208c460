"""VllmEngine: a stock vLLM V1 engine core as an ``EngineBackend`` (serving and live migration).

    >>> from llumnix_dask.config import EngineConfig
    >>> from llumnix_dask.request import Request, SamplingParams
    >>> engine = VllmEngine(EngineConfig(backend="vllm", block_size=32), "i0")   # doctest: +SKIP
    >>> req = Request.new(engine.encode("Hello"), SamplingParams(max_tokens=4))    # doctest: +SKIP
    >>> engine.add_request(req)                                                   # doctest: +SKIP
    >>> while engine.has_work():                                                  # doctest: +SKIP
    ...     outs = engine.step()

The engine core runs in this process and is stepped by the llumlet's thread; llumnix-dask tokenizes and
detokenizes (the model's ``tokenizer.json``), vLLM schedules, batches, pages the KV cache and samples.
Every vLLM internal this relies on is listed in :mod:`.compat`.

Live migration, source side: full blocks are gathered from vLLM's KV tensors while the request keeps
decoding (:mod:`.worker_ops`); *pause* takes the request out of the scheduler's running list with its
blocks kept, *release* aborts it there once the destination committed, *resume* puts it back. Destination
side: blocks are pre-allocated from vLLM's block pool and filled in place; *commit* hands them to a new
vLLM request whose prompt is every token so far and whose computed-token count is the migrated KV, queued
like a request whose KV a P/D connector loaded, so it decodes on from the next step with no recompute.
Seeded sampling is a function of (seed, position) (:mod:`.connector`), so nothing of it has to travel.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from llumnix_dask.config import EngineConfig
from llumnix_dask.engine.base import MigrationState, StepOutput, check_new_request
from llumnix_dask.engine.detokenizer import IncrementalDetokenizer, decode_ids, encode_text
from llumnix_dask.engine.fair_lock import FairLock
from llumnix_dask.engine.vllm import compat, worker_ops
from llumnix_dask.engine.vllm.blocks import VllmBlocks
from llumnix_dask.engine.vllm.translate import core_request, finish_reason
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.request import Request, RequestStatus

# vLLM keeps a forward pass's context (and the worker-side KV connector) in process-wide globals, so engines
# sharing a process (tests, notebooks) take turns to step. A cluster runs one engine per worker process.
_PROCESS_STEP = threading.Lock()
# Engines open in this process: vLLM's shutdown tears down process-wide state (its distributed groups, the
# KV connector), so only the last engine to close runs it.
_OPEN: set[str] = set()


@dataclass(eq=False)
class _Tracked:
    """A request this engine holds, next to vLLM's own Request object of the same id."""

    request: Request
    detok: IncrementalDetokenizer
    paused: bool = False


class VllmEngine:
    """A vLLM V1 engine instance behind the ``EngineBackend`` protocol."""

    def __init__(
        self, config: EngineConfig | None = None, instance_id: str = "vllm-0", *, clock: Callable[[], float] = time.time
    ) -> None:
        config = config or EngineConfig(backend="vllm")
        compat.require_vllm()
        compat.prepare_process(config.cpu_threads)
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.core import EngineCore
        from vllm.v1.executor.abstract import Executor

        from llumnix_dask.engine.hf_files import eos_token_ids, load_tokenizer_file
        from llumnix_dask.engine.nano.tiny_model import default_model_dir
        from llumnix_dask.engine.vllm.args import engine_args

        if config.cpu_threads is not None:
            import torch

            torch.set_num_threads(config.cpu_threads)
        self.config = config
        self.instance_id = instance_id
        self.clock = clock
        self.model_path = str(config.model) if config.model else str(default_model_dir())
        args, self.engine_id = engine_args(config, self.model_path, instance_id)
        vllm_config = args.create_engine_config(UsageContext.ENGINE_CONTEXT)
        self.core = EngineCore(vllm_config, Executor.get_class(vllm_config), log_stats=False)
        self.scheduler = self.core.scheduler
        self.connector = self.scheduler.get_kv_connector()
        self.connector.bind_requests(self.scheduler.requests)
        self.blocks = VllmBlocks(self.scheduler.kv_cache_manager)
        self.block_size = vllm_config.cache_config.block_size
        self.num_blocks = self.blocks.num_blocks
        self.max_model_len = vllm_config.model_config.max_model_len
        self.kv_layout = self._rpc(worker_ops.register_runner, self.engine_id)
        self.block_nbytes = int(self.kv_layout["block_nbytes"]) * self.tp_size
        self.vocab_size = vllm_config.model_config.get_vocab_size()
        self.tokenizer = load_tokenizer_file(self.model_path)
        self.eos_token_ids = frozenset(eos_token_ids(self.model_path))
        self._lock = FairLock()
        self._live: dict[str, _Tracked] = {}
        self.num_preemptions = 0
        self._closed = False
        with _PROCESS_STEP:
            _OPEN.add(self.engine_id)

    @property
    def tp_size(self) -> int:
        return int(self.core.vllm_config.parallel_config.world_size)

    def _rpc(self, fn: Callable, *args: Any) -> Any:
        """Run ``fn(worker, *args)`` in every worker; the first rank's answer."""
        return self.core.model_executor.collective_rpc(fn, args=args)[0]

    # -- text ----------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Prompt token ids for ``text`` (with BOS when the tokenizer adds one)."""
        return encode_text(self.tokenizer, text, self.model_path)

    def decode(self, token_ids: Sequence[int]) -> str:
        return decode_ids(self.tokenizer, token_ids)

    # -- serving ---------------------------------------------------------------------------------------
    def _validate(self, req: Request) -> None:
        check_new_request(
            req, instance_id=self.instance_id, already_here=req.request_id in self._live, vocab_size=self.vocab_size,
            context=self.max_model_len, context_note="max_model_len", has_tokenizer=self.tokenizer is not None,
        )

    def add_request(self, request: Request) -> None:
        with self._lock:
            self._validate(request)
            vreq, wave = self.core.preprocess_add_request(core_request(request, self.eos_token_ids))
            self.core.add_request(vreq, wave)
            request.instance_id = self.instance_id
            self._live[request.request_id] = _Tracked(request, IncrementalDetokenizer.for_request(self.tokenizer, request))

    def abort(self, request_id: str) -> bool:
        with self._lock:
            tracked = self._live.pop(request_id, None)
            if tracked is None:
                return False
            self.core.abort_requests([request_id])
            tracked.request.finish_reason = "abort"
            tracked.request.transition(RequestStatus.ABORTED, self.clock(), "aborted")
            return True

    def has_work(self) -> bool:
        with self._lock:
            return self.scheduler.get_num_unfinished_requests() > 0

    def get_request(self, request_id: str) -> Request | None:
        with self._lock:
            tracked = self._live.get(request_id)
            return None if tracked is None else tracked.request

    def step(self) -> list[StepOutput]:
        with self._lock:
            with _PROCESS_STEP:
                outputs, executed = self.core.step()
                self.core.post_step(executed)
            now = self.clock()
            self._sync_status(now)
            results = []
            for engine_outputs in outputs.values():
                for out in engine_outputs.outputs:
                    result = self._on_output(out, now)
                    if result is not None:
                        results.append(result)
            return results

    def _sync_status(self, now: float) -> None:
        """Mirror vLLM's scheduling of each request onto ours: admitted (RUNNING) or preempted (WAITING)."""
        from vllm.v1.request import RequestStatus as VllmStatus

        for rid, tracked in self._live.items():
            vreq = self.scheduler.requests.get(rid)
            if vreq is None or tracked.paused:
                continue
            req = tracked.request
            if vreq.status is VllmStatus.RUNNING and req.status is RequestStatus.WAITING:
                req.transition(RequestStatus.RUNNING, now, "recompute" if req.num_output_tokens else "scheduled")
            elif vreq.status is VllmStatus.PREEMPTED and req.status is RequestStatus.RUNNING:
                req.transition(RequestStatus.WAITING, now, "preempted")
                self.num_preemptions += 1

    def _on_output(self, out: Any, now: float) -> StepOutput | None:
        tracked = self._live.get(out.request_id)
        if tracked is None:  # aborted or released since vLLM produced it
            return None
        req, detok = tracked.request, tracked.detok
        if req.status is RequestStatus.WAITING:  # admitted and finished in the same step
            req.transition(RequestStatus.RUNNING, now, "scheduled")
        delta, hit_stop = "", False
        for token in out.new_token_ids:
            req.append_token(token, now)
            piece, hit_stop = detok.update(req.output_token_ids)
            delta += piece
            if hit_stop:
                break
        reason = "stop" if hit_stop else finish_reason(out.finish_reason)
        if reason is None:
            return StepOutput(req.request_id, list(out.new_token_ids), delta)
        if out.finish_reason is None:  # a stop string: vLLM would go on
            self.core.abort_requests([req.request_id])
        delta += detok.flush(req.output_token_ids)
        del self._live[req.request_id]
        req.finish_reason = reason
        req.transition(RequestStatus.ABORTED if reason == "abort" else RequestStatus.FINISHED, now, reason)
        return StepOutput(req.request_id, req.output_token_ids[-len(out.new_token_ids):], delta, True, reason)

    def load(self) -> InstanceLoad:
        with self._lock:
            sched = self.scheduler

            def rl(vreq: Any, blocks: int, preempted: bool = False, migrating: bool = False) -> RequestLoad:
                req = self._live[vreq.request_id].request if vreq.request_id in self._live else None
                priority = req.priority if req is not None else 0
                arrival = req.arrival_time if req is not None else vreq.arrival_time
                return RequestLoad(vreq.request_id, blocks, priority, vreq.num_tokens, arrival, preempted, migrating)

            running = [rl(v, self.blocks.held_by(v.request_id)) for v in sched.running]
            waiting = []
            for v in list(sched.kv_holding_waiting) + list(sched.waiting):
                held = self.blocks.held_by(v.request_id)
                if held:  # a migrated-in request holding its KV counts like a running one
                    running.append(rl(v, held))
                else:
                    waiting.append(rl(v, -(-v.num_tokens // self.block_size), preempted=v.num_preemptions > 0))
            paused = [t for t in self._live.values() if t.paused]
            for t in paused:
                vreq = sched.requests.get(t.request.request_id)
                if vreq is not None:
                    running.append(rl(vreq, self.blocks.held_by(vreq.request_id), migrating=True))
            return InstanceLoad.from_requests(
                self.instance_id,
                total_blocks=self.num_blocks,
                used_blocks=self.blocks.num_used,
                running=running,
                waiting=waiting,
                migrating=bool(paused or self.blocks.num_reserved),
                num_preemptions=self.num_preemptions,
                time=self.clock(),
            )

    def close(self) -> None:
        """Free this engine's KV cache and shut vLLM down (the last engine of the process only)."""
        with self._lock, _PROCESS_STEP:
            if self._closed:
                return
            self._closed = True
            _OPEN.discard(self.engine_id)
            last = not _OPEN
            for rid in list(self._live):
                self.core.abort_requests([rid])
            self._live.clear()
            self.blocks.release_all_reserved()
            self._rpc(worker_ops.unregister_runner, self.engine_id)
            if last:
                self.core.shutdown()

    # -- migration: source side ------------------------------------------------------------------------
    def _holding(self, request_id: str) -> tuple[_Tracked, Any]:
        """A request in vLLM's running batch, or paused here for migration (it holds its blocks)."""
        tracked = self._live.get(request_id)
        vreq = self.scheduler.requests.get(request_id)
        if tracked is None or vreq is None or not (tracked.paused or _in(vreq, self.scheduler.running)):
            raise KeyError(f"request {request_id} is not running on instance {self.instance_id}")
        return tracked, vreq

    def request_blocks(self, request_id: str) -> list[int]:
        with self._lock:
            self._holding(request_id)
            return self.blocks.table(request_id)

    def num_kv_tokens(self, request_id: str) -> int:
        with self._lock:
            return int(self._holding(request_id)[1].num_computed_tokens)

    def export_blocks(self, block_ids: Sequence[int]) -> Any:
        """``[layers, n, *block_shape]`` (one rank) or ``[ranks, layers, n, ...]`` (tensor parallel).

        In process (one rank) without the engine lock: a gather only reads blocks that no step writes (full
        blocks of a decoding request, or the blocks of a paused one), so the source keeps stepping while its
        KV is copied out. vLLM's multiprocess executor takes one RPC at a time, so there it waits for the step.
        """
        with self._rpc_turn():
            parts = self.core.model_executor.collective_rpc(worker_ops.gather_blocks, args=(list(block_ids),))
        return parts[0] if len(parts) == 1 else worker_ops.stack_ranks(parts)

    def _rpc_turn(self) -> Any:
        """The engine lock where RPCs to the workers must not overlap a step (multiprocess executor)."""
        return contextlib.nullcontext() if self.tp_size == 1 else self._lock

    def pause(self, request_id: str) -> MigrationState:
        with self._lock:
            tracked, vreq = self._holding(request_id)
            if tracked.paused:
                raise KeyError(f"request {request_id} is already paused on instance {self.instance_id}")
            self.scheduler.running.remove(vreq)  # out of the batch; its blocks stay allocated
            tracked.paused = True
            req = tracked.request
            req.transition(RequestStatus.MIGRATING, self.clock(), "paused for migration")
            extra = {"detokenizer": tracked.detok.state(), "block_size": self.block_size, "backend": "vllm"}
            return MigrationState(copy.deepcopy(req), int(vreq.num_computed_tokens), self.blocks.table(request_id), extra)

    def _paused(self, request_id: str) -> tuple[_Tracked, Any]:
        tracked = self._live.get(request_id)
        vreq = self.scheduler.requests.get(request_id)
        if tracked is None or not tracked.paused or vreq is None:
            raise KeyError(f"request {request_id} is not paused on instance {self.instance_id}")
        return tracked, vreq

    def resume(self, request_id: str) -> None:
        with self._lock:
            tracked, vreq = self._paused(request_id)
            tracked.paused = False
            self.scheduler.running.append(vreq)
            tracked.request.transition(RequestStatus.RUNNING, self.clock(), "migration failed, resumed")

    def release(self, request_id: str) -> None:
        with self._lock:
            self._paused(request_id)
            del self._live[request_id]
            self.core.abort_requests([request_id])  # frees its blocks; nothing is emitted for it

    def take_waiting(self, request_id: str) -> Request:
        with self._lock:
            tracked = self._live.get(request_id)
            vreq = self.scheduler.requests.get(request_id)
            if tracked is None or vreq is None or tracked.request.status is not RequestStatus.WAITING \
                    or self.blocks.held_by(request_id):
                raise KeyError(f"request {request_id} is not queued on instance {self.instance_id}")
            req = tracked.request
            del self._live[request_id]
            self.core.abort_requests([request_id])
            return req

    # -- migration: destination side -------------------------------------------------------------------
    def reserve_blocks(self, n: int, watermark: int = 0) -> list[int] | None:
        if n < 0 or watermark < 0:
            raise ValueError(f"reserve_blocks: n and watermark must be >= 0, got {n}, {watermark}")
        with self._lock:
            return self.blocks.reserve(n, watermark)

    def import_blocks(self, block_ids: Sequence[int], buffer: Any) -> None:
        import torch

        with self._lock:
            self.blocks.check_reserved(block_ids, "import_blocks")
        # In process, outside the lock: the blocks are this migration's alone, no step reads or writes them.
        buffer = torch.as_tensor(buffer)
        with self._rpc_turn():
            if self.tp_size == 1:
                self._rpc(worker_ops.scatter_blocks, list(block_ids), buffer)
            else:
                self.core.model_executor.collective_rpc(worker_ops.scatter_rank_blocks, args=(list(block_ids), buffer))

    def free_blocks(self, block_ids: Sequence[int]) -> None:
        with self._lock:
            self.blocks.free(block_ids)

    def commit_migrated(self, state: MigrationState, block_ids: Sequence[int]) -> None:
        """Adopt the request with its KV in ``block_ids``; counts the migration in ``request.num_migrations``."""
        with self._lock:
            req = state.request
            if req.request_id in self._live:
                raise ValueError(f"request {req.request_id}: already on instance {self.instance_id}")
            if state.extra.get("block_size", self.block_size) != self.block_size:
                raise ValueError("commit_migrated: source and destination block sizes differ")
            if not 0 <= state.num_kv_tokens <= req.num_tokens:
                raise ValueError(f"commit_migrated: num_kv_tokens {state.num_kv_tokens} out of range")
            if -(-state.num_kv_tokens // self.block_size) != len(block_ids):
                raise ValueError(f"commit_migrated: {len(block_ids)} blocks for {state.num_kv_tokens} KV tokens")
            vreq, wave = self.core.preprocess_add_request(core_request(req, self.eos_token_ids))
            # The last token is fed again by the next step: its logits pick the next token.
            vreq.num_computed_tokens = min(state.num_kv_tokens, req.num_tokens - 1)
            self.blocks.adopt(req.request_id, block_ids)
            self.core.add_request(vreq, wave)
            detok = IncrementalDetokenizer.for_request(self.tokenizer, req, state.extra.get("detokenizer"))
            req.transition(RequestStatus.RUNNING, self.clock(), f"migrated in to {self.instance_id}")
            req.instance_id = self.instance_id
            req.num_migrations += 1
            self._live[req.request_id] = _Tracked(req, detok)


def _in(item: Any, items: Sequence[Any]) -> bool:
    return any(x is item for x in items)
