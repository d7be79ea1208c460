"""Helpers of the end-to-end tests (imported by name): the backends every e2e suite runs on."""

from __future__ import annotations

import dataclasses

import pytest

from llumnix_dask.config import EngineConfig

# Each suite that parametrizes its cluster over BACKENDS runs on real nano engines and on real vLLM engines.
BACKENDS = ["nano", pytest.param("vllm", marks=pytest.mark.vllm)]


def for_backend(backend: str, config: EngineConfig) -> EngineConfig:
    """``config`` (nano terms) for ``backend``: vLLM on CPU needs blocks of a multiple of 32 tokens, and its
    eager mode starts in about a second (the compiled mode is what the benchmarks measure)."""
    if backend == "nano":
        return config
    return dataclasses.replace(config, backend="vllm", block_size=32, vllm_args={"enforce_eager": True})
