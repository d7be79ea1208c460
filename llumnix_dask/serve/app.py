"""The OpenAI-compatible HTTP API over a :class:`~llumnix_dask.Cluster` (FastAPI; run it with uvicorn).

    >>> app = create_app(cluster, ServeConfig(api_key="secret"))          # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                      # doctest: +SKIP

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with ``stream: true`` as SSE),
``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus), ``GET /llumnix/snapshot`` (the global
scheduler's snapshot). With an API key every ``/v1`` and ``/llumnix`` route needs
``Authorization: Bearer <key>``; ``/health`` and ``/metrics`` stay open for probes and scrapers.

No request holds the event loop: bodies over ``ServeConfig.max_request_bytes`` get 413 before they are read,
a prompt too long for the model's context is refused before it is tokenized (and a long one is tokenized in
a helper process), and a client that goes away stops its request, streaming or not. When the cluster's
queue is full a request gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llumnix_dask.config import ServeConfig
from llumnix_dask.client.errors import InstanceLost, NoInstanceError, Overloaded, RequestFailed
from llumnix_dask.client.records import StreamChunk
from llumnix_dask.serve.metrics import ServerMetrics
from llumnix_dask.serve.openai_schema import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    chat_prompt,
    error_body,
)

logger = logging.getLogger(__name__)


def _finish_reason(reason: str | None) -> str | None:
    return {"abort": "stop"}.get(reason or "", reason)


def create_app(cluster: Any, config: ServeConfig | None = None) -> FastAPI:
    """The FastAPI app serving ``cluster`` (anything with Cluster's ``astream``/``agenerate``/``snapshot``)."""
    config = config or ServeConfig()
    metrics = ServerMetrics(snapshot=cluster.snapshot)
    cluster.frontend.on_finished = metrics.observe
    created = int(time.time())
    app = FastAPI(title="llumnix-dask", version="0.1.0", docs_url="/docs", redoc_url=None)
    app.state.cluster, app.state.metrics, app.state.config = cluster, metrics, config
    app.add_middleware(BodyLimit, max_bytes=config.max_request_bytes)

    async def check_key(request: Request) -> None:
        if not config.api_key:
            return
        header = request.headers.get("authorization", "")
        token = header[7:] if header.lower().startswith("bearer ") else ""
        if not secrets.compare_digest(token.encode(), config.api_key.encode()):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'", code="invalid_api_key")

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{loc}: {first.get('msg', 'invalid request')}" if loc else str(first.get("msg", "invalid request"))
        return JSONResponse(error_body(message, param=loc or None), status_code=400)

    @app.get("/health")
    async def health() -> JSONResponse:
        rows = await asyncio.to_thread(_safe_snapshot, cluster)
        n = len(rows.get("instances", [])) if rows else 0
        status = 200 if n else 503
        return JSONResponse({"status": "ok" if n else "no instances", "instances": n}, status_code=status)

    @app.get("/metrics")
    async def prometheus() -> Response:
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models() -> dict:
        return {
            "object": "list",
            "data": [{"id": config.model_name, "object": "model", "created": created, "owned_by": "llumnix-dask"}],
        }

    @app.get("/llumnix/snapshot", dependencies=[Depends(check_key)])
    async def snapshot() -> JSONResponse:
        snap = await asyncio.to_thread(cluster.snapshot)
        return JSONResponse(_json_safe(snap))

    def check_model(name: str | None) -> None:
        if name not in (None, "", config.model_name):
            raise APIError(404, f"model {name!r} does not exist; this server serves {config.model_name!r}",
                           param="model", code="model_not_found")

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(body: CompletionRequest, http: Request) -> Any:
        check_model(body.model)
        sampling = _sampling(body)
        prompts = body.prompts()
        rid = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            if len(prompts) != 1:
                raise APIError(400, "prompt: streaming takes a single prompt", param="prompt")

            def chunk_json(chunk: StreamChunk | None, usage: dict | None = None) -> dict:
                choices = [] if chunk is None else [{
                    "index": 0, "text": chunk.text, "logprobs": None,
                    "finish_reason": _finish_reason(chunk.finish_reason) if chunk.finished else None,
                }]
                out = {"id": rid, "object": "text_completion", "created": int(time.time()),
                       "model": config.model_name, "choices": choices}
                if usage is not None:
                    out["usage"] = usage
                return out

            return await _sse(cluster, prompts[0], sampling, body, chunk_json, rid)
        results = await _generate_all(cluster, http, prompts, sampling, body, rid)
        return {
            "id": rid, "object": "text_completion", "created": int(time.time()), "model": config.model_name,
            "choices": [
                {"index": i, "text": c.text, "logprobs": None, "finish_reason": _finish_reason(c.finish_reason)}
                for i, c in enumerate(results)
            ],
            "usage": _usage(sum(c.num_prompt_tokens for c in results), sum(len(c.token_ids) for c in results)),
        }

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat_completions(body: ChatCompletionRequest, http: Request) -> Any:
        check_model(body.model)
        sampling = _sampling(body)
        prompt = chat_prompt(body.messages)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            first = [True]

            def chunk_json(chunk: StreamChunk | None, usage: dict | None = None) -> dict:
                choices = []
                if chunk is not None:
                    delta: dict = {"content": chunk.text}
                    if first[0]:
                        delta["role"], first[0] = "assistant", False
                    choices = [{"index": 0, "delta": delta,
                                "finish_reason": _finish_reason(chunk.finish_reason) if chunk.finished else None}]
                out = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()),
                       "model": config.model_name, "choices": choices}
                if usage is not None:
                    out["usage"] = usage
                return out

            return await _sse(cluster, prompt, sampling, body, chunk_json, rid)
        (c,) = await _generate_all(cluster, http, [prompt], sampling, body, rid)
        return {
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": config.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": _finish_reason(c.finish_reason)}],
            "usage": _usage(c.num_prompt_tokens, len(c.token_ids)),
        }

    return app


def _sampling(body: Any) -> Any:
    try:
        return body.sampling()
    except ValueError as exc:
        raise APIError(400, str(exc)) from None


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, Overloaded):
        retry = max(1, int(round(exc.retry_after_s)))
        return APIError(429, f"{exc}; retry after {retry} s", type_="rate_limit_error", code="overloaded",
                        headers={"Retry-After": str(retry)})
    if isinstance(exc, NoInstanceError):
        return APIError(503, str(exc), type_="server_error", code="no_instance")
    if isinstance(exc, InstanceLost):
        return APIError(503, str(exc), type_="server_error", code="instance_lost")
    if isinstance(exc, (ValueError, RequestFailed)):
        # The engine rejects what it can never serve (too long, bad params): the client's fault.
        return APIError(400, str(exc))
    logger.exception("request failed", exc_info=exc)
    return APIError(500, f"internal error: {type(exc).__name__}: {exc}", type_="server_error")


async def _make(cluster: Any, prompt: Any, sampling: Any, body: Any, request_id: str) -> Any:
    """The validated, tokenized request (off the event loop for long prompts); bad input is a 400.
    It carries the response's id, so logs, the scheduler's records and the client's id all match."""
    try:
        return await cluster.amake_request(prompt, sampling, priority=body.priority_value, slo=body.slo_ttft_s,
                                           request_id=request_id)
    except Exception as exc:
        raise _as_api_error(exc) from None


async def _generate_all(cluster: Any, http: Request, prompts: list, sampling: Any, body: Any, rid: str) -> list:
    """Generate every prompt; if the client disconnects first, stop them all (their KV is freed)."""
    ids = [rid] if len(prompts) == 1 else [f"{rid}-{i}" for i in range(len(prompts))]
    requests = [await _make(cluster, p, sampling, body, i) for p, i in zip(prompts, ids)]
    work = asyncio.ensure_future(asyncio.gather(*(cluster.agenerate_request(r) for r in requests)))
    watcher = asyncio.ensure_future(_disconnected(http))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not work.done():
        work.cancel()  # the client went away: cancelling aborts each request on its instance
        try:
            await work
        except BaseException:
            pass
        raise APIError(499, "the client closed the request")
    try:
        return work.result()
    except Exception as exc:
        raise _as_api_error(exc) from None


async def _disconnected(http: Request, poll_s: float = 0.25) -> None:
    while not await http.is_disconnected():
        await asyncio.sleep(poll_s)


async def _sse(cluster: Any, prompt: Any, sampling: Any, body: Any, chunk_json: Any, rid: str) -> Any:
    """Start the stream; errors before the first token become a normal JSON error response."""
    request = await _make(cluster, prompt, sampling, body, rid)
    try:
        stream = cluster.astream_request(request)
        first = await stream.__anext__()
    except StopAsyncIteration:
        first, stream = None, None
    except Exception as exc:
        raise _as_api_error(exc) from None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        n_tokens = 0
        try:
            if first is not None:
                n_tokens += len(first.token_ids)
                yield f"data: {json.dumps(chunk_json(first))}\n\n"
                async for chunk in stream:
                    n_tokens += len(chunk.token_ids)
                    yield f"data: {json.dumps(chunk_json(chunk))}\n\n"
            if include_usage:
                yield f"data: {json.dumps(chunk_json(None, _usage(request.num_prompt_tokens, n_tokens)))}\n\n"
        except Exception as exc:  # mid-stream failure: tell the client in-band, then end the stream
            yield f"data: {json.dumps(_as_api_error(exc).body())}\n\n"
        finally:
            if stream is not None:
                await stream.aclose()  # client gone: aborts the request on its instance
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 without being read in full (by its
    Content-Length, or counted as it streams in)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await self._refuse(send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise StarletteHTTPException(413, self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"the request body is larger than {self.max_bytes} bytes (ServeConfig.max_request_bytes)"

    async def _refuse(self, send: Any) -> None:
        body = json.dumps(error_body(self._message(), code="request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _json_safe(value: Any) -> Any:
    """Plain JSON: non-finite floats (the freeness of a draining instance is -inf) become null."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def _safe_snapshot(cluster: Any) -> dict | None:
    try:
        return cluster.snapshot()
    except Exception:
        return None
