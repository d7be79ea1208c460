"""Helpers shared by the nano engine tests (imported by conftest and the test modules)."""

from __future__ import annotations

from llumnix_dask.config import EngineConfig, TinyModelConfig
from llumnix_dask.request import Request, SamplingParams

# Small enough that a forward pass takes a millisecond or two on CPU, but with GQA and several layers.
SMALL = TinyModelConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=160, vocab_size=300)


def make_engine(model: str, instance_id: str = "i0", **kw):
    from llumnix_dask.engine.nano.engine import NanoEngine

    kw.setdefault("num_blocks", 256)
    return NanoEngine(EngineConfig(model=model, **kw), instance_id)


def prompt(n: int, seed: int, vocab: int = 300) -> list[int]:
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n,), generator=g).tolist()


def new_request(tokens: list[int], rid: str, arrival: float = 0.0, **sampling) -> Request:
    sampling.setdefault("ignore_eos", True)
    return Request.new(tokens, SamplingParams(**sampling), request_id=rid, arrival_time=arrival)


def run_to_completion(engine, max_steps: int = 10_000) -> dict[str, list]:
    """Step until idle; returns every StepOutput per request id."""
    outs: dict[str, list] = {}
    for _ in range(max_steps):
        if not engine.has_work():
            return outs
        for o in engine.step():
            outs.setdefault(o.request_id, []).append(o)
    raise AssertionError("engine did not finish")
