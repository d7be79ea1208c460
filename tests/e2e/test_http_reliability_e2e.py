"""The HTTP server under abuse, over a real socket: huge and malformed requests, clients that vanish,
overload. Every bad request gets an OpenAI-style 4xx and the server keeps serving; nothing blocks the event
loop; a client that goes away stops its request."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from llumnix_dask import Cluster, EngineConfig, PolicyConfig, ServeConfig
from llumnix_dask.serve.server import start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

KEY = "test-key"
MODEL = "llumnix-tiny"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    engine = EngineConfig(num_blocks=256, max_batch_size=16)
    with Cluster(2, engine=engine, policy=PolicyConfig(migration_enabled=False), dashboard_address=None) as cluster:
        srv = start_server(cluster, ServeConfig(port=0, api_key=KEY, model_name=MODEL))
        srv.cluster = cluster
        try:
            yield srv
        finally:
            srv.stop()


def post(server, path, body, headers=None, timeout=60):
    # json.dumps escapes what is not ASCII, so even a lone surrogate travels as valid JSON ("\\ud800").
    return httpx.post(server.url + path, content=json.dumps(body).encode(), timeout=timeout,
                      headers={**AUTH, "Content-Type": "application/json", **(headers or {})})


def serving(server) -> bool:
    r = post(server, "/v1/completions", {"prompt": "still there?", "max_tokens": 2})
    return r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def idle(server) -> bool:
    rows = httpx.get(server.url + "/llumnix/snapshot", headers=AUTH).json()["instances"]
    return sum(r["num_running"] + r["num_waiting"] for r in rows) == 0


def wait_until(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what} not reached in {timeout} s"
        time.sleep(0.05)


class Stream:
    """A streamed completion read in a thread, recording when each chunk arrived."""

    def __init__(self, server, max_tokens=600):
        self.times: list[float] = []
        self.done = threading.Event()
        body = {"prompt": "Once upon a time", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
        self.thread = threading.Thread(target=self._run, args=(server, body), daemon=True)
        self.thread.start()

    def _run(self, server, body):
        with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=AUTH, timeout=120) as resp:
            for line in resp.iter_lines():
                if line.startswith("data: {"):
                    self.times.append(time.monotonic())
        self.done.set()

    def count_between(self, t0, t1):
        return sum(t0 <= t <= t1 for t in self.times)


def test_a_huge_prompt_does_not_stall_the_other_streams(server):
    stream = Stream(server)
    wait_until(lambda: len(stream.times) >= 5, what="the stream decoding")
    too_big = post(server, "/v1/completions", {"prompt": "word " * 2_200_000, "max_tokens": 4})  # ~11 MB
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]["message"]

    def slow_body():  # 3 MB of prompt, uploaded over about a second
        text = json.dumps({"prompt": "word " * 600_000, "max_tokens": 4}).encode()
        step = len(text) // 20
        for k in range(0, len(text), step):
            yield text[k:k + step]
            time.sleep(0.05)

    t0 = time.monotonic()
    long = httpx.post(server.url + "/v1/completions", content=slow_body(),
                      headers={**AUTH, "Content-Type": "application/json"}, timeout=60)
    t1 = time.monotonic()
    assert long.status_code == 400 and "context" in long.json()["error"]["message"]
    assert stream.count_between(t0, t1) >= 3  # the stream kept receiving tokens meanwhile
    assert httpx.get(server.url + "/v1/models", headers=AUTH).status_code == 200
    stream.done.wait(120)
    assert serving(server)


def test_a_client_that_drops_a_non_streaming_request_stops_it(server):
    with pytest.raises(httpx.ReadTimeout):
        post(server, "/v1/completions", {"prompt": "Once upon a time", "max_tokens": 1900, "ignore_eos": True},
             timeout=1.0)
    wait_until(lambda: idle(server), what="the dropped request aborted and its blocks freed")


def test_streamed_usage_counts_the_prompt(server):
    body = {"prompt": "Once upon a time", "max_tokens": 5, "ignore_eos": True}
    full = post(server, "/v1/completions", body).json()["usage"]
    with httpx.stream("POST", server.url + "/v1/completions", headers=AUTH, timeout=60,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    usage = events[-1]["usage"]
    assert usage == full and usage["prompt_tokens"] > 0


def test_overload_is_answered_with_429_and_retry_after_while_high_priority_gets_in(server):
    cluster = server.cluster
    cluster.set_policy(queue_limit_per_instance=1, high_priority_queue_limit_per_instance=100)
    try:
        codes, retry = [], []

        def fire():
            r = post(server, "/v1/completions", {"prompt": "load", "max_tokens": 120, "ignore_eos": True})
            codes.append(r.status_code)
            if r.status_code == 429:
                retry.append(r.headers.get("retry-after"))
                assert r.json()["error"]["code"] == "overloaded"

        threads = [threading.Thread(target=fire) for _ in range(40)]
        for t in threads:
            t.start()
        wait_until(lambda: 429 in codes, timeout=120, what="a 429")
        high = post(server, "/v1/completions", {"prompt": "urgent", "max_tokens": 4, "priority": "high"})
        assert high.status_code == 200
        for t in threads:
            t.join(300)
        assert codes.count(200) >= 2 and codes.count(429) >= 1 and set(codes) <= {200, 429}
        assert all(r is not None and int(r) >= 1 for r in retry)
    finally:
        cluster.set_policy(queue_limit_per_instance=256, high_priority_queue_limit_per_instance=1024)
    wait_until(lambda: idle(server), what="idle")
    assert serving(server)


LONG = "word " * 3000
BAD_COMPLETIONS = [
    ({"max_tokens": 3}, 400, "prompt"),
    ({"prompt": "", "max_tokens": 3}, 400, "prompt"),
    ({"prompt": [], "max_tokens": 3}, 400, "prompt"),
    ({"prompt": 42}, 400, "prompt"),
    ({"prompt": ["a", 5]}, 400, "prompt"),
    ({"prompt": [10**9]}, 400, "token ids"),
    ({"prompt": [-3, 5]}, 400, "token ids"),
    ({"prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": "ten"}, 400, "max_tokens"),
    ({"prompt": "hi", "max_tokens": 10**9}, 400, "context"),
    ({"prompt": LONG, "max_tokens": 3}, 400, "context"),
    ({"prompt": LONG, "max_tokens": 3, "stream": True}, 400, "context"),
    ({"prompt": "hi", "temperature": -1}, 400, "temperature"),
    ({"prompt": "hi", "temperature": 3}, 400, "temperature"),
    ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ({"prompt": "hi", "top_p": 0}, 400, "top_p"),
    ({"prompt": "hi", "top_p": 1.5}, 400, "top_p"),
    ({"prompt": "hi", "top_k": -1}, 400, "top_k"),
    ({"prompt": "hi", "n": 2}, 400, "n=1"),
    ({"prompt": "hi", "best_of": 3}, 400, "best_of"),
    ({"prompt": "hi", "echo": True}, 400, "echo"),
    ({"prompt": "hi", "logprobs": 5}, 400, "logprobs"),
    ({"prompt": "hi", "stop": 7}, 400, "stop"),
    ({"prompt": "hi", "seed": "abc"}, 400, "seed"),
    ({"prompt": "hi", "stop_token_ids": ["x"]}, 400, "stop_token_ids"),
    ({"prompt": "hi", "model": "gpt-9"}, 404, "does not exist"),
    ({"prompt": "bad \ud800 unicode"}, 400, "Unicode"),
    ({"prompt": "hi", "priority": "urgent"}, 400, "priority"),
    ({"prompt": "hi", "slo_ttft_s": -1}, 400, "slo_ttft_s"),
    ({"prompt": "hi", "stream": "maybe"}, 400, "stream"),
    ({"prompt": ["a", "b"], "stream": True}, 400, "single prompt"),
]
BAD_CHAT = [
    ({"max_tokens": 3}, 400, "messages"),
    ({"messages": []}, 400, "messages"),
    ({"messages": "hello"}, 400, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "image_url"),
    ({"messages": [{"role": "user", "content": "hi"}], "logprobs": True}, 400, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 3}, 400, "logprobs"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, 400, "max_completion_tokens"),
    ({"messages": [{"role": "user"}], "max_tokens": 10**9}, 400, "context"),
]


@pytest.mark.parametrize("body,status,needle", BAD_COMPLETIONS, ids=[f"completions-{i}" for i in range(len(BAD_COMPLETIONS))])
def test_bad_completion_requests_get_a_4xx_that_says_why(server, body, status, needle):
    resp = post(server, "/v1/completions", body)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert needle in error["message"] and error["type"]


@pytest.mark.parametrize("body,status,needle", BAD_CHAT, ids=[f"chat-{i}" for i in range(len(BAD_CHAT))])
def test_bad_chat_requests_get_a_4xx_that_says_why(server, body, status, needle):
    resp = post(server, "/v1/chat/completions", body)
    assert resp.status_code == status, resp.text
    assert needle in resp.json()["error"]["message"]


@pytest.mark.parametrize("case", ["malformed", "array", "empty", "text", "wrong-key", "wrong-method", "no-route"])
def test_malformed_requests_get_a_4xx(server, case):
    url = server.url + "/v1/completions"
    json_type = {"Content-Type": "application/json"}
    resp = {
        "malformed": lambda: httpx.post(url, content=b"{not json", headers={**AUTH, **json_type}),
        "array": lambda: httpx.post(url, content=b"[1, 2]", headers={**AUTH, **json_type}),
        "empty": lambda: httpx.post(url, content=b"", headers={**AUTH, **json_type}),
        "text": lambda: httpx.post(url, content=b"prompt=hi", headers={**AUTH, "Content-Type": "text/plain"}),
        "wrong-key": lambda: httpx.post(url, json={"prompt": "hi"}, headers={"Authorization": "Bearer nope"}),
        "wrong-method": lambda: httpx.get(url, headers=AUTH),
        "no-route": lambda: httpx.post(server.url + "/v1/nothing", json={}, headers=AUTH),
    }[case]()
    assert 400 <= resp.status_code < 500 and "message" in resp.json()["error"]


def test_the_server_still_serves_after_all_that(server):
    assert serving(server)
    wait_until(lambda: idle(server), what="idle")


def test_fuzzed_request_bodies_never_get_a_5xx(server):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**10), st.floats(allow_nan=True),
                        st.text(max_size=20))
    values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                                 inner, max_size=4),
                          max_leaves=8)
    fields = {
        "prompt": st.one_of(st.text(max_size=40), st.lists(st.integers(-5, 600), max_size=20), values),
        "messages": st.one_of(st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "x"]),
                                                               "content": st.one_of(st.text(max_size=20), values)}),
                                       max_size=3), values),
        "max_tokens": st.one_of(st.integers(-2, 6), values),
        "temperature": st.one_of(st.floats(-1, 3), st.just(float("nan")), values),
        "top_p": st.one_of(st.floats(-1, 2), values),
        "top_k": st.one_of(st.integers(-2, 50), values),
        "stop": st.one_of(st.text(max_size=4), st.lists(st.text(max_size=4), max_size=2), values),
        "seed": values, "stream": st.one_of(st.booleans(), values), "n": values, "priority": values,
        "ignore_eos": values, "model": st.one_of(st.just(MODEL), values), "slo_ttft_s": values,
    }
    bodies = st.fixed_dictionaries({}, optional=fields).flatmap(
        lambda body: st.dictionaries(st.text(max_size=6), values, max_size=2).map(lambda extra: {**extra, **body}))

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]), body=bodies)
    def check(path, body):
        if isinstance(body.get("max_tokens"), int) and body.get("max_tokens", 0) > 6:
            body["max_tokens"] = 6
        resp = post(server, path, body)
        assert resp.status_code < 500, (body, resp.status_code, resp.text)
        if resp.status_code >= 400:
            assert "message" in resp.json()["error"]

    check()
    assert hypothesis is not None and serving(server)
