"""Sampling is a pure function of (logits, params, seed, position)."""

from __future__ import annotations

import torch

from llumnix_dask.engine.nano.sampling import sample, uniform
from llumnix_dask.request import SamplingParams


def logits_rows(n: int, vocab: int = 50, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, vocab, generator=torch.Generator().manual_seed(seed)) * 2


def test_uniform_is_a_pure_function_in_range():
    values = [uniform(s, p) for s in range(20) for p in range(50)]
    assert values == [uniform(s, p) for s in range(20) for p in range(50)]
    assert all(0 <= v < 1 for v in values) and len(set(values)) == len(values)
    assert abs(sum(values) / len(values) - 0.5) < 0.03


def test_greedy_top_k_1_and_tiny_top_p_pick_the_argmax():
    logits = logits_rows(8)
    params = [SamplingParams(), SamplingParams(temperature=1.0, top_k=1), SamplingParams(temperature=2.0, top_p=1e-6)]
    for p in params:
        assert sample(logits, [p] * 8, list(range(8)), [0] * 8) == logits.argmax(-1).tolist()


def test_a_row_samples_the_same_token_in_any_batch():
    logits = logits_rows(6)
    params = [SamplingParams(temperature=t, top_k=k, top_p=tp, seed=i)
              for i, (t, k, tp) in enumerate([(0, 0, 1), (1, 0, 1), (0.7, 5, 1), (1.3, 0, 0.8), (0, 0, 1), (2, 3, 0.5)])]
    batched = sample(logits, params, [p.seed for p in params], [9] * 6)
    alone = [sample(logits[i : i + 1], [params[i]], [params[i].seed], [9])[0] for i in range(6)]
    assert batched == alone


def test_sampled_frequencies_follow_the_filtered_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 4000
    p = SamplingParams(temperature=1.0, top_k=4, top_p=0.95, seed=1)
    draws = [sample(logits, [p], [1], [pos])[0] for pos in range(n)]
    probs = logits[0, :4].softmax(-1)  # top-k=4 keeps 4 tokens; their mass reaches 0.95 only with all 4
    counts = torch.bincount(torch.tensor(draws), minlength=6).float() / n
    assert counts[4:].sum() == 0
    assert torch.allclose(counts[:4], probs, atol=0.03)
