"""Fixtures of the live-migration tests: real nano engines (the built-in tiny model) and reference outputs
from unmigrated runs. Plain helpers live in migration_helpers.py (a unique module name, so importing them
never picks up another directory's conftest)."""

from __future__ import annotations

import pytest
from migration_helpers import ENGINE

from llumnix_dask.config import EngineConfig
from llumnix_dask.request import Request


@pytest.fixture(scope="session")
def nano():
    """Factory of fresh nano engines (the model files are built once and cached)."""
    from llumnix_dask.engine import create_engine

    def make(instance_id: str, config: EngineConfig = ENGINE):
        return create_engine(config, instance_id)

    return make


@pytest.fixture(scope="session")
def reference(nano):
    """Tokens of each request run alone on one engine, never migrated (cached per request shape)."""
    cache: dict[tuple, list[int]] = {}
    engine = nano("reference")

    def run(request: Request) -> list[int]:
        key = (request.request_id, tuple(request.prompt_token_ids), request.sampling)
        if key not in cache:
            copy = Request.new(list(request.prompt_token_ids), request.sampling, request_id=request.request_id)
            engine.add_request(copy)
            while engine.has_work():
                engine.step()
            cache[key] = list(copy.output_token_ids)
        return cache[key]

    return run


