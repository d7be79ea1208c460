"""Token sampling for a whole batch at once: greedy, temperature, top-k, top-p.

The random draw of a request is a pure function of ``(seed, position)``: one uniform number from a
hash of the two, mapped through the inverse CDF of the filtered distribution. There is no generator
state, so preemption, a different batch, or a live migration to another instance can never change
which token is sampled::

    >>> uniform(seed=7, position=3) == uniform(seed=7, position=3)
    True
    >>> 0.0 <= uniform(7, 3) < 1.0
    True
"""

from __future__ import annotations

import zlib
from typing import Sequence

import torch

from llumnix_dask.engine.seeding import position_seed
from llumnix_dask.request import SamplingParams

def uniform(seed: int, position: int) -> float:
    """A number in [0, 1) determined by (seed, position) alone."""
    return (position_seed(seed, position) >> 11) * (1.0 / (1 << 53))


def effective_seed(params: SamplingParams, request_id: str, engine_seed: int = 0) -> int:
    """The request's seed, or (unseeded) one derived from its id, which travels with it on migration."""
    if params.seed is not None:
        return int(params.seed)
    return zlib.crc32(request_id.encode()) ^ (engine_seed << 32)


def sample(
    logits: torch.Tensor, params: Sequence[SamplingParams], seeds: Sequence[int], positions: Sequence[int]
) -> list[int]:
    """One token id per row of ``logits`` ([S, V]); row i follows ``params[i]`` and draws with
    ``uniform(seeds[i], positions[i])``."""
    tokens = logits.argmax(dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        vocab = logits.shape[-1]
        dev = logits.device
        sub = logits[rows] if len(rows) < len(params) else logits
        temp = torch.tensor([params[i].temperature for i in rows], dtype=torch.float32, device=dev)
        top_k = torch.tensor([params[i].top_k or vocab for i in rows], device=dev).clamp(max=vocab)
        top_p = torch.tensor([params[i].top_p for i in rows], dtype=torch.float32, device=dev)
        u = torch.tensor([uniform(seeds[i], positions[i]) for i in rows], dtype=torch.float64, device=dev)

        sorted_logits, order = (sub / temp[:, None]).sort(dim=-1, descending=True)
        ranks = torch.arange(vocab, device=dev)
        sorted_logits = sorted_logits.masked_fill(ranks[None, :] >= top_k[:, None], float("-inf"))
        probs = sorted_logits.softmax(dim=-1)
        # top-p: keep the smallest prefix whose mass reaches top_p (the first token always stays).
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= top_p[:, None], 0.0)
        cdf = probs.double().cumsum(dim=-1)
        pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp(max=vocab - 1)
        # Never land on a filtered-out token (possible only through rounding at the very top of the CDF).
        nonzero = (probs > 0).sum(dim=-1, keepdim=True) - 1
        pick = torch.minimum(pick, nonzero)
        tokens[rows] = order.gather(1, pick).squeeze(1)
    return tokens.tolist()
