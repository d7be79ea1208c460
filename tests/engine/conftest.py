"""Fixtures for the nano engine tests: small random-weight checkpoints written once per session."""

from __future__ import annotations

import pytest
from nano_helpers import SMALL

from llumnix_dask.config import TinyModelConfig


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared CPU the threads' barriers stall."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

@pytest.fixture(scope="session")
def small_model(tmp_path_factory) -> str:
    from llumnix_dask.engine.nano.tiny_model import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("small"), SMALL))


@pytest.fixture(scope="session")
def untied_model(tmp_path_factory) -> str:
    """No weight tying, multi-query attention (1 KV head), a different RoPE base."""
    from llumnix_dask.engine.nano.tiny_model import make_tiny_model

    cfg = TinyModelConfig(
        hidden_size=96,
        num_layers=3,
        num_heads=6,
        num_kv_heads=1,
        intermediate_size=200,
        vocab_size=320,
        rope_theta=500000.0,
        tie_word_embeddings=False,
        seed=3,
    )
    return str(make_tiny_model(tmp_path_factory.mktemp("untied"), cfg))

