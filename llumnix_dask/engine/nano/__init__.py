"""The embedded nano engine: a Llama-family model with a paged KV cache and continuous batching.

``NanoEngine`` is imported lazily so that ``import llumnix_dask.engine.nano`` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NanoEngine", "make_tiny_model", "default_model_dir"]


def __getattr__(name: str) -> Any:
    if name == "NanoEngine":
        from llumnix_dask.engine.nano.engine import NanoEngine

        return NanoEngine
    if name in ("make_tiny_model", "default_model_dir"):
        from llumnix_dask.engine.nano import tiny_model

        return getattr(tiny_model, name)
    raise AttributeError(name)
