"""Fixtures of the live-migration tests: real engines of every backend (the built-in tiny model) and
reference outputs from unmigrated runs. Plain helpers live in migration_helpers.py (a unique module name,
so importing them never picks up another directory's conftest)."""

from __future__ import annotations

import pytest
from migration_helpers import BACKENDS, ENGINE, engine_config

from llumnix_dask.config import EngineConfig
from llumnix_dask.request import Request


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_engine(backend):
    """Factory of fresh engines of the backend under test: ``make_engine(instance_id, config=ENGINE)``
    (``config`` is given in nano terms and adapted to the backend). Closed when the test ends."""
    from llumnix_dask.engine import create_engine

    made = []

    def make(instance_id: str, config: EngineConfig = ENGINE):
        engine = create_engine(engine_config(backend, config), instance_id)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


@pytest.fixture(scope="session")
def reference(backend):
    """Tokens of each request run alone on one engine, never migrated (cached per request shape)."""
    from llumnix_dask.engine import create_engine

    cache: dict[tuple, list[int]] = {}
    engine = create_engine(engine_config(backend), f"reference-{backend}")

    def run(request: Request) -> list[int]:
        key = (request.request_id, tuple(request.prompt_token_ids), request.sampling)
        if key not in cache:
            copy = Request.new(list(request.prompt_token_ids), request.sampling, request_id=request.request_id)
            engine.add_request(copy)
            while engine.has_work():
                engine.step()
            cache[key] = list(copy.output_token_ids)
        return cache[key]

    yield run
    close = getattr(engine, "close", None)
    if close is not None:
        close()
