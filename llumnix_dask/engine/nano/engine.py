"""NanoEngine: the embedded paged-KV, continuous-batching engine (implements ``EngineBackend``).

    >>> from llumnix_dask.config import DEFAULT_BLOCK_SIZE, EngineConfig
    >>> from llumnix_dask.request import Request, SamplingParams
    >>> engine = NanoEngine(EngineConfig(), "i0")          # the built-in tiny model, no network
    >>> req = Request.new(engine.encode("Hello"), SamplingParams(max_tokens=4, ignore_eos=True))
    >>> engine.add_request(req)
    >>> while engine.has_work():
    ...     outs = engine.step()
    >>> len(req.output_token_ids)
    4

Thread safety: every public method takes one FIFO lock. ``step()`` holds it for a whole iteration;
the migration calls hold it only for their own bookkeeping or block copy, so an export of full blocks
delays decoding by at most the copy.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence as Seq

import torch

from llumnix_dask.config import DEFAULT_BLOCK_SIZE, EngineConfig
from llumnix_dask.engine.base import MigrationState, StepOutput, check_new_request
from llumnix_dask.engine.nano.batch import SeqChunk, build_forward_batch
from llumnix_dask.engine.detokenizer import IncrementalDetokenizer, decode_ids, encode_text
from llumnix_dask.engine.fair_lock import FairLock
from llumnix_dask.engine.nano.blocks import NanoBlocks, RequestState
from llumnix_dask.engine.nano.kv_cache import PagedKVCache
from llumnix_dask.engine.nano.loader import load_checkpoint
from llumnix_dask.engine.nano.model import NanoLlama
from llumnix_dask.engine.nano.sampling import effective_seed, sample
from llumnix_dask.engine.nano.scheduler import Scheduler
from llumnix_dask.policy.load import InstanceLoad, RequestLoad
from llumnix_dask.request import Request, RequestStatus

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class NanoEngine:
    """A Llama-family model served with a paged KV cache and a continuous-batching scheduler."""

    def __init__(
        self, config: EngineConfig | None = None, instance_id: str = "nano-0", *, clock: Callable[[], float] = time.time
    ) -> None:
        from llumnix_dask.engine.nano.tiny_model import default_model_dir

        self.config = config = config or EngineConfig()
        self.instance_id = instance_id
        self.clock = clock
        if config.cpu_threads is not None:
            torch.set_num_threads(config.cpu_threads)  # process-wide: one engine per worker process
        self.device = resolve_device(config.device)
        self.dtype = _DTYPES[config.dtype]
        self.model_path = str(config.model) if config.model else str(default_model_dir())
        ckpt = load_checkpoint(self.model_path, self.dtype, self.device)
        self.model_args = args = ckpt.args
        self.tokenizer = ckpt.tokenizer
        self.eos_token_ids = frozenset(args.eos_token_ids)
        self.max_model_len = config.max_model_len or args.max_position_embeddings
        if self.max_model_len > args.max_position_embeddings:
            raise ValueError(
                f"EngineConfig.max_model_len: {self.max_model_len} exceeds the model's "
                f"max_position_embeddings ({args.max_position_embeddings})"
            )
        self.block_size = config.block_size or DEFAULT_BLOCK_SIZE
        bytes_per_block = args.kv_bytes_per_token(self.dtype) * self.block_size
        self.num_blocks = config.num_blocks or max(1, config.kv_cache_bytes // bytes_per_block)
        # A lone request always fits: generation stops ("length") when the cache or the context is full.
        self.max_seq_len = min(self.max_model_len, self.num_blocks * self.block_size)
        self.model = NanoLlama(ckpt, self.max_model_len)
        self.cache = PagedKVCache(
            args.num_layers, self.num_blocks, self.block_size, args.num_kv_heads, args.head_dim, self.dtype, self.device
        )
        self.blocks = NanoBlocks(self.num_blocks, self.block_size)
        self.scheduler = Scheduler(self.blocks, config.max_batch_size, config.max_batched_tokens)
        self._lock = FairLock()
        self._seqs: dict[str, RequestState] = {}  # every live request: queued, running or paused
        self._paused: dict[str, RequestState] = {}
        # Tests set capture_logits to compare the engine's logits with a reference forward.
        self.capture_logits = False
        self.captured_logits: dict[str, list[torch.Tensor]] = {}

    # -- text helpers ----------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Prompt token ids for ``text`` (with BOS when the tokenizer adds one)."""
        return encode_text(self.tokenizer, text, self.model_path)

    def decode(self, token_ids: Seq[int]) -> str:
        return decode_ids(self.tokenizer, token_ids)

    # -- serving ---------------------------------------------------------------------------------------
    def _validate(self, req: Request) -> None:
        check_new_request(
            req, instance_id=self.instance_id, already_here=req.request_id in self._seqs,
            vocab_size=self.model_args.vocab_size, context=self.max_seq_len, has_tokenizer=self.tokenizer is not None,
            context_note=f"max_model_len={self.max_model_len}, KV cache={self.num_blocks * self.block_size} tokens",
        )

    def add_request(self, request: Request) -> None:
        with self._lock:
            self._validate(request)
            seq = RequestState(
                request,
                seed=effective_seed(request.sampling, request.request_id, self.config.seed),
                detok=IncrementalDetokenizer.for_request(self.tokenizer, request),
                preempted=request.num_output_tokens > 0,
                order=self.scheduler.new_order(),
            )
            request.instance_id = self.instance_id
            self._seqs[request.request_id] = seq
            self.scheduler.enqueue(seq)

    def abort(self, request_id: str) -> bool:
        with self._lock:
            seq = self._seqs.pop(request_id, None)
            if seq is None:
                return False
            self._paused.pop(request_id, None)
            self.scheduler.remove(seq)
            self.blocks.release(seq)
            seq.request.finish_reason = "abort"
            seq.request.transition(RequestStatus.ABORTED, self.clock(), "aborted")
            return True

    def has_work(self) -> bool:
        with self._lock:
            return bool(self.scheduler.waiting or self.scheduler.running)

    def get_request(self, request_id: str) -> Request | None:
        with self._lock:
            seq = self._seqs.get(request_id)
            return None if seq is None else seq.request

    def step(self) -> list[StepOutput]:
        with self._lock, torch.inference_mode():
            plan = self.scheduler.schedule(self.clock())
            if not plan.chunks:
                return []
            chunks = []
            for seq, n in plan.chunks:
                start = seq.num_computed
                sample_now = start + n == seq.request.num_tokens
                chunks.append(SeqChunk(seq.tokens(start, start + n), start, seq.block_ids, sample_now))
            batch = build_forward_batch(chunks, self.block_size, self.device)
            logits = self.model.forward(batch, self.cache)
            sampled = [seq for (seq, _), c in zip(plan.chunks, chunks) if c.sample]
            for seq, n in plan.chunks:
                seq.num_computed += n
            if self.capture_logits:
                for seq, row in zip(sampled, logits):
                    self.captured_logits.setdefault(seq.request_id, []).append(row.cpu().clone())
            token_ids = sample(
                logits,
                [s.request.sampling for s in sampled],
                [s.seed for s in sampled],
                [s.request.num_output_tokens for s in sampled],
            )
            now = self.clock()
            return [self._append_token(seq, tok, now) for seq, tok in zip(sampled, token_ids)]

    def _append_token(self, seq: RequestState, token: int, now: float) -> StepOutput:
        req, sp = seq.request, seq.request.sampling
        req.append_token(token, now)
        delta, hit_stop = seq.detok.update(req.output_token_ids)
        reason = None
        if hit_stop or token in sp.stop_token_ids or (not sp.ignore_eos and token in self.eos_token_ids):
            reason = "stop"
        elif req.num_output_tokens >= sp.max_tokens or req.num_tokens >= self.max_seq_len:
            reason = "length"
        if reason is not None:
            delta += seq.detok.flush(req.output_token_ids)
            self.scheduler.remove(seq)
            self.blocks.release(seq)
            del self._seqs[req.request_id]
            req.finish_reason = reason
            req.transition(RequestStatus.FINISHED, now, reason)
        return StepOutput(req.request_id, [token], delta, reason is not None, reason)

    def load(self) -> InstanceLoad:
        with self._lock:
            sched = self.scheduler

            def rl(seq: RequestState, blocks: int, preempted: bool = False, migrating: bool = False) -> RequestLoad:
                r = seq.request
                return RequestLoad(r.request_id, blocks, r.priority, r.num_tokens, r.arrival_time, preempted, migrating)

            running = [rl(s, len(s.block_ids)) for s in sched.running]
            running += [rl(s, len(s.block_ids), migrating=True) for s in self._paused.values()]
            waiting = [rl(s, sched.demand(s), preempted=s.preempted) for s in sched.waiting]
            return InstanceLoad.from_requests(
                self.instance_id,
                total_blocks=self.num_blocks,
                used_blocks=self.blocks.num_used,
                running=running,
                waiting=waiting,
                migrating=bool(self._paused or self.blocks.num_reserved),
                num_preemptions=sched.num_preemptions,
                time=self.clock(),
            )

    # -- migration: source side ----------------------------------------------------------------------
    def _holding_seq(self, request_id: str) -> RequestState:
        seq = self._seqs.get(request_id)
        if seq is None or not (seq.request_id in self._paused or seq in self.scheduler.running):
            raise KeyError(f"request {request_id} is not running on instance {self.instance_id}")
        return seq

    def request_blocks(self, request_id: str) -> list[int]:
        with self._lock:
            return list(self._holding_seq(request_id).block_ids)

    def num_kv_tokens(self, request_id: str) -> int:
        with self._lock:
            return self._holding_seq(request_id).num_computed

    def export_blocks(self, block_ids: Seq[int]) -> torch.Tensor:
        """``[num_layers, 2, len(block_ids), block_size, kv_heads, head_dim]``, contiguous, on the engine's
        device."""
        # Without the engine lock, so a paused request's last blocks need not wait for the step in flight (the
        # downtime would grow with the batch's step time). Safe because migration only exports blocks no step
        # writes: full blocks of a running request (a step writes only a request's newest block, or blocks
        # just allocated) and the blocks of a paused one. Should the request lose its blocks meanwhile
        # (preempted, finished, aborted), the migration sees it and aborts, discarding what was read.
        # no_grad, not inference_mode: the buffer must stay an ordinary tensor that transports may write into.
        with torch.no_grad():
            return self.cache.export(block_ids)

    def pause(self, request_id: str) -> MigrationState:
        with self._lock:
            seq = self._seqs.get(request_id)
            if seq is None or seq not in self.scheduler.running:
                raise KeyError(f"request {request_id} is not running on instance {self.instance_id}")
            self.scheduler.remove(seq)
            seq.request.transition(RequestStatus.MIGRATING, self.clock(), "paused for migration")
            self._paused[request_id] = seq
            return MigrationState(
                request=copy.deepcopy(seq.request),
                num_kv_tokens=seq.num_computed,
                block_ids=list(seq.block_ids),
                extra={"seed": seq.seed, "detokenizer": seq.detok.state(), "block_size": self.block_size},
            )

    def _paused_seq(self, request_id: str) -> RequestState:
        seq = self._paused.get(request_id)
        if seq is None:
            raise KeyError(f"request {request_id} is not paused on instance {self.instance_id}")
        return seq

    def resume(self, request_id: str) -> None:
        with self._lock:
            seq = self._paused_seq(request_id)
            del self._paused[request_id]
            seq.request.transition(RequestStatus.RUNNING, self.clock(), "migration failed, resumed")
            self.scheduler.add_running(seq)

    def release(self, request_id: str) -> None:
        with self._lock:
            seq = self._paused_seq(request_id)
            del self._paused[request_id]
            del self._seqs[request_id]
            self.blocks.release(seq)

    def take_waiting(self, request_id: str) -> Request:
        with self._lock:
            seq = self._seqs.get(request_id)
            if seq is None or seq not in self.scheduler.waiting:
                raise KeyError(f"request {request_id} is not queued on instance {self.instance_id}")
            self.scheduler.remove(seq)
            del self._seqs[request_id]
            return seq.request

    # -- migration: destination side -----------------------------------------------------------------
    def reserve_blocks(self, n: int, watermark: int = 0) -> list[int] | None:
        with self._lock:
            return self.blocks.reserve(n, watermark)

    def import_blocks(self, block_ids: Seq[int], buffer: Any) -> None:
        with self._lock, torch.no_grad():
            self.blocks.check_reserved(block_ids, "import_blocks")
            self.cache.import_(block_ids, torch.as_tensor(buffer))

    def free_blocks(self, block_ids: Seq[int]) -> None:
        with self._lock:
            self.blocks.free_reserved(block_ids)

    def commit_migrated(self, state: MigrationState, block_ids: Seq[int]) -> None:
        """Adopt the request; counts the migration in ``request.num_migrations``."""
        with self._lock:
            req = state.request
            if req.request_id in self._seqs:
                raise ValueError(f"request {req.request_id}: already on instance {self.instance_id}")
            self.blocks.check_reserved(block_ids, "commit_migrated")
            if not 0 <= state.num_kv_tokens <= req.num_tokens:
                raise ValueError(f"commit_migrated: num_kv_tokens {state.num_kv_tokens} out of range")
            if -(-state.num_kv_tokens // self.block_size) > len(block_ids):
                raise ValueError(f"commit_migrated: {len(block_ids)} blocks cannot hold {state.num_kv_tokens} tokens")
            if state.extra.get("block_size", self.block_size) != self.block_size:
                raise ValueError("commit_migrated: source and destination block sizes differ")
            detok = IncrementalDetokenizer.for_request(self.tokenizer, req, state.extra.get("detokenizer"))
            seed = state.extra.get("seed", effective_seed(req.sampling, req.request_id, self.config.seed))
            # At least the last token is fed again by the next step (its logits pick the next token).
            num_computed = min(state.num_kv_tokens, req.num_tokens - 1)
            seq = RequestState(req, seed, detok, num_computed=num_computed, order=self.scheduler.new_order())
            self.blocks.adopt(seq, block_ids)
            req.transition(RequestStatus.RUNNING, self.clock(), f"migrated in to {self.instance_id}")
            req.instance_id = self.instance_id
            req.num_migrations += 1
            self._seqs[req.request_id] = seq
            self.scheduler.add_running(seq)
