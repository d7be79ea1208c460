"""llumnix-dask requests in vLLM's terms: an ``EngineCoreRequest`` from a :class:`~llumnix_dask.request.Request`,
and vLLM's finish reasons in ours.

A request is always handed to vLLM *as it stands*: every token so far is prompt and only the rest is left
to generate, so the same translation serves a new request, one that moves between queues after a
preemption, and one that migrates in with its KV.
"""

from __future__ import annotations

from typing import Any, Iterable

from llumnix_dask.request import Request

# vllm.v1.engine.FinishReason -> finish reason of a StepOutput
_FINISH_REASONS = {0: "stop", 1: "length", 2: "abort", 3: "error", 4: "stop"}


def core_request(req: Request, eos_token_ids: Iterable[int]) -> Any:
    """vLLM's ``EngineCoreRequest`` for ``req``; detokenization and stop strings stay with llumnix-dask."""
    from vllm import SamplingParams as VllmSampling
    from vllm.v1.engine import EngineCoreRequest

    sp = req.sampling
    stop_ids = list(sp.stop_token_ids) + ([] if sp.ignore_eos else sorted(eos_token_ids))
    sampling = VllmSampling(
        max_tokens=sp.max_tokens - req.num_output_tokens,
        temperature=float(sp.temperature),
        top_k=sp.top_k,
        top_p=float(sp.top_p),
        seed=sp.seed if sp.temperature > 0 else None,
        stop_token_ids=stop_ids or None,
        ignore_eos=True,  # the end-of-sequence ids are among stop_token_ids unless the request ignores them
        detokenize=False,
    )
    return EngineCoreRequest(
        request_id=req.request_id,
        prompt_token_ids=req.all_token_ids,
        mm_features=None,
        sampling_params=sampling,
        pooling_params=None,
        arrival_time=req.arrival_time,
        lora_request=None,
        cache_salt=None,
        data_parallel_rank=None,
    )


def finish_reason(reason: Any) -> str | None:
    """"stop", "length", "abort" or "error" for a vLLM ``FinishReason`` (None: not finished)."""
    return None if reason is None else _FINISH_REASONS.get(int(reason), "stop")
