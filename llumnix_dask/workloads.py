"""Request traces for the simulator and the benchmarks: lengths + arrival times (the paper's section 6.1).

Generated lengths follow the paper's artifact: a Zipf distribution over ranks ``1 .. 2*mean-1`` with
exponent alpha (2.0 / 1.5 / 1.15 for means 128 / 256 / 512), rescaled so its mean is the target mean,
ceiled and clipped at 6144 tokens; input and output lengths are drawn independently. Arrivals are
Poisson, or Gamma-distributed inter-arrival times with mean ``1/rate`` and shape ``1/cv**2`` (burstier
as cv grows). Real traces (ShareGPT JSON/JSONL, BurstGPT CSV) give lengths only; their arrivals are
synthetic too. Everything is seeded::

    >>> t = generate_trace("M-M", num_requests=1000, rate=7.5, seed=0)
    >>> len(t), bool(230 < t.input_lens.mean() < 290), bool(100 < t.arrival_s[-1] < 170)
    (1000, True, True)
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

MAX_LEN = 6144
# ShareGPT-like pairs reach at most this many tokens, input + output (the artifact's loader dropped longer records).
SHAREGPT_MAX_TOKENS = 12_800
# Zipf exponent per target mean (the paper's generated traces, section 6.1).
ZIPF_ALPHA = {128: 2.0, 256: 1.5, 512: 1.15}
# Trace presets: (mean input length, mean output length).
TRACE_PRESETS = {
    "S-S": (128, 128),
    "M-M": (256, 256),
    "L-L": (512, 512),
    "S-L": (128, 512),
    "L-S": (512, 128),
}
# Real-trace-like lengths: (P50, P99) of the input and output lengths of the paper's real traces
# (the paper's Table 1), drawn from log-normal distributions with that median and 99th percentile (their means come
# out within ~10% of the traces' means: ShareGPT in ~275 vs 306 (after its cap, below), out 527 vs 500; BurstGPT in 787
# vs 830).
# The datasets themselves are not shipped; load_trace reads them when you have them. What the artifact's
# loaders took (benchmarks-repo/benchmark_throughput.py, branch osdi24ae): ShareGPT = sharegpt_gpt4.jsonl (the
# GPT-4 conversations), the first human -> gpt turn of each record in file order, records of 12,800 tokens or
# more dropped, no 6,144 clip (generate_trace does the same: a ShareGPT-like pair at or above max_request_tokens
# is redrawn, ~0.4% of the prompts are longer than 6,144 tokens); BurstGPT = random rows of the GPT-4 conversation log, each length clipped at
# 6,144, failed rows (0 response tokens) kept as 1-token requests. Their arrivals: the AE scripts pass no
# arrival process for the datasets (the client's default then sends every request at once), the paper's own
# runner (benchmarks-repo/run_dataset) passes Poisson, as here. The paper gives no output statistics for
# BurstGPT: it takes ShareGPT's output distribution (an assumption that likely overstates its load: GPT-4
# conversation answers are shorter than ShareGPT's, and the paper ran BurstGPT, whose prompts are 2.7x longer,
# at about ShareGPT's rates).
REAL_TRACE_STATS = {
    "ShareGPT": ((74, 3388), (487, 1234)),
    "BurstGPT": ((582, 3549), (487, 1234)),
}
ARRIVALS = ("poisson", "gamma")


@dataclass(frozen=True)
class Trace:
    """A workload: request i arrives at ``arrival_s[i]`` with the given lengths and priority."""

    arrival_s: np.ndarray  # float64, non-decreasing, seconds from the start
    input_lens: np.ndarray  # int64 >= 1
    output_lens: np.ndarray  # int64 >= 1
    high_priority: np.ndarray  # bool
    name: str = "trace"

    def __len__(self) -> int:
        return len(self.arrival_s)

    def describe(self) -> dict:
        """Summary numbers (for benchmark JSON)."""
        return {
            "name": self.name,
            "requests": len(self),
            "duration_s": float(self.arrival_s[-1]) if len(self) else 0.0,
            "input_mean": float(self.input_lens.mean()) if len(self) else 0.0,
            "output_mean": float(self.output_lens.mean()) if len(self) else 0.0,
            "high_priority_fraction": float(self.high_priority.mean()) if len(self) else 0.0,
        }


def zipf_lengths(
    mean: int, size: int, rng: np.random.Generator, alpha: float | None = None, max_len: int = MAX_LEN
) -> np.ndarray:
    """``size`` lengths from the rescaled Zipf distribution with the given target mean."""
    if mean < 1:
        raise ValueError(f"mean: must be >= 1, got {mean!r}")
    if alpha is None:
        if mean not in ZIPF_ALPHA:
            raise ValueError(f"alpha: no default Zipf exponent for mean {mean}; pass alpha (defaults exist for "
                             f"{sorted(ZIPF_ALPHA)})")
        alpha = ZIPF_ALPHA[mean]
    if alpha <= 0:
        raise ValueError(f"alpha: must be > 0, got {alpha!r}")
    ranks = np.arange(1, max(2, 2 * mean), dtype=np.float64)  # 1 .. 2*mean-1
    p = ranks**-alpha
    p /= p.sum()
    scale = mean / float((ranks * p).sum())  # rescale the distribution's mean to the target
    drawn = rng.choice(ranks, size=size, p=p)
    return np.clip(np.ceil(drawn * scale), 1, max_len).astype(np.int64)


def lognormal_lengths(
    p50: float, p99: float, size: int, rng: np.random.Generator, max_len: int = MAX_LEN
) -> np.ndarray:
    """``size`` lengths from the log-normal distribution with median ``p50`` and 99th percentile ``p99``,
    ceiled and clipped to [1, max_len]."""
    if not 0 < p50 < p99:
        raise ValueError(f"lengths: need 0 < p50 < p99, got p50={p50!r}, p99={p99!r}")
    sigma = (np.log(p99) - np.log(p50)) / 2.3263478740408408  # the standard normal's 99th percentile
    return np.minimum(_lognormal(p50, sigma, size, rng), max_len)


def _lognormal(median: float, sigma: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` log-normal draws, ceiled to whole tokens (at least 1)."""
    return np.maximum(np.ceil(rng.lognormal(np.log(median), sigma, size=size)), 1).astype(np.int64)


def arrival_times(
    num_requests: int, rate: float, rng: np.random.Generator, arrival: str = "poisson", cv: float = 1.0
) -> np.ndarray:
    """Arrival times (s): Poisson, or Gamma inter-arrivals with mean ``1/rate`` and shape ``1/cv**2``."""
    if not rate > 0:
        raise ValueError(f"rate: must be > 0 requests/s, got {rate!r}")
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival: unknown arrival process {arrival!r}; choose one of {', '.join(ARRIVALS)}")
    if arrival == "poisson":
        gaps = rng.exponential(1.0 / rate, size=num_requests)
    else:
        if not cv > 0:
            raise ValueError(f"cv: must be > 0, got {cv!r}")
        shape = 1.0 / cv**2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), size=num_requests)
    return np.cumsum(gaps)


def _check_common(num_requests: int, high_priority_fraction: float) -> None:
    if not isinstance(num_requests, (int, np.integer)) or num_requests < 1:
        raise ValueError(f"num_requests: must be an integer >= 1, got {num_requests!r}")
    if not 0.0 <= high_priority_fraction <= 1.0:
        raise ValueError(f"high_priority_fraction: must be in [0, 1], got {high_priority_fraction!r}")


def generate_trace(
    preset: str,
    num_requests: int,
    rate: float,
    arrival: str = "poisson",
    cv: float = 1.0,
    high_priority_fraction: float = 0.0,
    seed: int = 0,
    max_request_tokens: int = SHAREGPT_MAX_TOKENS,
) -> Trace:
    """A generated trace: ``preset`` is one of S-S, M-M, L-L, S-L, L-S (Zipf lengths), or ShareGPT / BurstGPT
    (lengths with those traces' statistics, see :data:`REAL_TRACE_STATS`).

    Lengths are capped as the artifact's loaders capped them: the generated traces and BurstGPT clip input
    and output at 6,144 tokens each; ShareGPT does not clip, it redraws every pair whose input + output
    reaches ``max_request_tokens`` (12,800: the artifact dropped such records). Pass an instance's KV capacity
    in tokens when it is smaller, so that every request fits on one instance::

        >>> t = generate_trace("ShareGPT", 5000, rate=8.0, seed=0, max_request_tokens=12_432)
        >>> bool(t.input_lens.max() > 6144), bool((t.input_lens + t.output_lens).max() < 12_432)
        (True, True)
    """
    if preset not in TRACE_PRESETS and preset not in REAL_TRACE_STATS:
        raise ValueError(f"trace: unknown trace {preset!r}; choose one of "
                         f"{', '.join([*TRACE_PRESETS, *REAL_TRACE_STATS])}")
    _check_common(num_requests, high_priority_fraction)
    if not (isinstance(max_request_tokens, (int, np.integer)) and max_request_tokens >= 2048):
        raise ValueError(f"max_request_tokens: must be an integer >= 2048, got {max_request_tokens!r}")
    rng = np.random.default_rng(seed)
    if preset in REAL_TRACE_STATS:
        (in50, in99), (out50, out99) = REAL_TRACE_STATS[preset]
        if preset == "ShareGPT":
            inputs, outputs = _pairs_below(in50, in99, out50, out99, num_requests, rng, int(max_request_tokens))
        else:
            inputs = lognormal_lengths(in50, in99, num_requests, rng)
            outputs = lognormal_lengths(out50, out99, num_requests, rng)
        return _finish(preset, inputs, outputs, num_requests, rate, arrival, cv, high_priority_fraction, rng)
    in_mean, out_mean = TRACE_PRESETS[preset]
    inputs = zipf_lengths(in_mean, num_requests, rng)
    outputs = zipf_lengths(out_mean, num_requests, rng)
    return _finish(preset, inputs, outputs, num_requests, rate, arrival, cv, high_priority_fraction, rng)


def trace_from_lengths(
    input_lens: Sequence[int],
    output_lens: Sequence[int],
    num_requests: int,
    rate: float,
    arrival: str = "poisson",
    cv: float = 1.0,
    high_priority_fraction: float = 0.0,
    seed: int = 0,
    name: str = "lengths",
) -> Trace:
    """A trace whose lengths are drawn (seeded, with replacement if needed) from real length pairs."""
    _check_common(num_requests, high_priority_fraction)
    inputs, outputs = np.asarray(input_lens, dtype=np.int64), np.asarray(output_lens, dtype=np.int64)
    if len(inputs) == 0 or len(inputs) != len(outputs):
        raise ValueError(f"lengths: need equally many (>0) input and output lengths, got {len(inputs)} and "
                         f"{len(outputs)}")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(inputs), size=num_requests, replace=num_requests > len(inputs))
    return _finish(name, inputs[idx], outputs[idx], num_requests, rate, arrival, cv, high_priority_fraction, rng)


def _pairs_below(in50, in99, out50, out99, n, rng, limit) -> tuple[np.ndarray, np.ndarray]:
    """``n`` (input, output) log-normal pairs, unclipped, each pair redrawn until input + output < ``limit``.

    The statistics describe the trace after its long records were dropped, so the input's spread is the one
    whose 99th percentile *below the cap* is ``in99`` (dropping the tail alone would pull it ~5% lower)."""
    in_sigma = _sigma_below(in50, in99, limit - out50)
    out_sigma = (np.log(out99) - np.log(out50)) / 2.3263478740408408

    def draw(k: int) -> tuple[np.ndarray, np.ndarray]:
        return _lognormal(in50, in_sigma, k, rng), _lognormal(out50, out_sigma, k, rng)

    inputs, outputs = draw(n)
    while (over := inputs + outputs >= limit).any():
        inputs[over], outputs[over] = draw(int(over.sum()))
    return inputs, outputs


def _sigma_below(p50: float, p99: float, cap: float) -> float:
    """The log-normal spread (median ``p50``) whose 99th percentile is ``p99`` once values >= ``cap`` are
    dropped: Phi(z99 / sigma) = 0.99 Phi(z_cap / sigma), solved by bisection (z = log of the ratio to p50)."""
    from statistics import NormalDist

    phi = NormalDist().cdf
    z99, zcap = np.log(p99 / p50), np.log(cap / p50)
    lo, hi = z99 / 2.3263478740408408, z99  # the untruncated spread, and one far too wide
    for _ in range(60):
        mid = (lo + hi) / 2
        if phi(z99 / mid) > 0.99 * phi(zcap / mid):
            lo = mid  # P99 of the truncated distribution still below p99: widen
        else:
            hi = mid
    return float(lo)


def _finish(name, inputs, outputs, n, rate, arrival, cv, hp_fraction, rng) -> Trace:
    arrivals = arrival_times(n, rate, rng, arrival, cv)
    high = np.zeros(n, dtype=bool)
    if hp_fraction > 0:
        high[rng.choice(n, size=int(round(hp_fraction * n)), replace=False)] = True
    label = f"{name} {arrival}" + (f" cv={cv:g}" if arrival == "gamma" else "") + f" {rate:g} req/s"
    return Trace(arrivals, np.maximum(inputs, 1), np.maximum(outputs, 1), high, label)


# -- real-trace loaders --------------------------------------------------------------------------------
_TOKEN_RE = re.compile(r"\w+|[^\w\s]")


def approx_token_count(text: str) -> int:
    """Rough token count without a tokenizer: words and punctuation marks (BPE splits long words more,
    so this undercounts slightly; pass a real tokenizer's length function where it matters)."""
    return len(_TOKEN_RE.findall(text))


def load_sharegpt(
    path: str | Path, count_tokens: Callable[[str], int] = approx_token_count, max_len: int = MAX_LEN
) -> tuple[np.ndarray, np.ndarray]:
    """(input lengths, output lengths) from a ShareGPT-format file (.json list or .jsonl lines).

    Each record has ``conversations``: a list of ``{"from": "human"|"gpt", "value": text}`` turns; the
    first human turn followed by a gpt turn gives one (input, output) pair. Records without such a pair are
    skipped; lengths are clipped to ``max_len``.
    """
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        records = json.loads(text)
        if isinstance(records, dict):
            records = [records]
    except json.JSONDecodeError:
        try:
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not ShareGPT JSON or JSONL ({e})") from None
    inputs, outputs = [], []
    for rec in records:
        turns = rec.get("conversations") or rec.get("conversation") or [] if isinstance(rec, dict) else []
        for a, b in zip(turns, turns[1:]):
            if a.get("from") in ("human", "user") and b.get("from") in ("gpt", "assistant", "chatgpt"):
                ni, no = count_tokens(a.get("value", "")), count_tokens(b.get("value", ""))
                if ni > 0 and no > 0:
                    inputs.append(min(ni, max_len))
                    outputs.append(min(no, max_len))
                break
    if not inputs:
        raise ValueError(f"{path}: no human->gpt conversation pair found (is it ShareGPT format?)")
    return np.array(inputs, dtype=np.int64), np.array(outputs, dtype=np.int64)


def load_burstgpt(path: str | Path, max_len: int = MAX_LEN) -> tuple[np.ndarray, np.ndarray]:
    """(input lengths, output lengths) from a BurstGPT-format CSV (``Request tokens``, ``Response tokens``
    columns). Rows with a zero length (failed requests) are skipped; lengths are clipped to ``max_len``."""
    path = Path(path)
    inputs, outputs = [], []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        if not {"Request tokens", "Response tokens"} <= fields:
            raise ValueError(f"{path}: BurstGPT CSV needs 'Request tokens' and 'Response tokens' columns, "
                             f"found {sorted(fields)}")
        for row in reader:
            try:
                ni, no = int(float(row["Request tokens"])), int(float(row["Response tokens"]))
            except (TypeError, ValueError):
                continue
            if ni > 0 and no > 0:
                inputs.append(min(ni, max_len))
                outputs.append(min(no, max_len))
    if not inputs:
        raise ValueError(f"{path}: no rows with positive request and response token counts")
    return np.array(inputs, dtype=np.int64), np.array(outputs, dtype=np.int64)


def load_trace(
    source: str,
    num_requests: int,
    rate: float,
    arrival: str = "poisson",
    cv: float = 1.0,
    high_priority_fraction: float = 0.0,
    seed: int = 0,
    max_request_tokens: int = SHAREGPT_MAX_TOKENS,
) -> Trace:
    """A preset name (S-S, M-M, ...) or a path to a ShareGPT .json/.jsonl or BurstGPT .csv file.
    ``max_request_tokens`` caps the generated ShareGPT-like pairs (see :func:`generate_trace`)."""
    if source in TRACE_PRESETS or source in REAL_TRACE_STATS:
        return generate_trace(source, num_requests, rate, arrival, cv, high_priority_fraction, seed,
                              min(max_request_tokens, SHAREGPT_MAX_TOKENS))
    path = Path(source)
    if not path.exists():
        raise ValueError(f"trace: {source!r} is neither a preset ({', '.join([*TRACE_PRESETS, *REAL_TRACE_STATS])}) "
                         f"nor an existing file")
    if path.suffix.lower() == ".csv":
        lens = load_burstgpt(path)
    else:
        lens = load_sharegpt(path)
    return trace_from_lengths(*lens, num_requests, rate, arrival, cv, high_priority_fraction, seed, name=path.stem)
