"""The OpenAI-compatible HTTP API over a real socket, driven with the ``openai`` client and httpx."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from e2e_helpers import BACKENDS, for_backend

from llumnix_dask import Cluster, EngineConfig, PolicyConfig, ServeConfig
from llumnix_dask.serve.server import start_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

KEY = "test-key"
MODEL = "llumnix-tiny"


@pytest.fixture(scope="module", params=BACKENDS)
def server(request):
    engine = for_backend(request.param, EngineConfig(num_blocks=256, max_batch_size=16))
    with Cluster(2, engine=engine, policy=PolicyConfig(migration_enabled=False), dashboard_address=None) as cluster:
        srv = start_server(cluster, ServeConfig(port=0, api_key=KEY, model_name=MODEL))
        srv.backend, srv.tokenizer, srv.cluster = request.param, cluster.tokenizer, cluster
        try:
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_completions_stream_and_non_stream_agree(client):
    full = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert full.usage.completion_tokens == 10 and full.choices[0].finish_reason == "length"
    pieces = [c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=0, stream=True,
        extra_body={"ignore_eos": True})]
    assert "".join(pieces) == full.choices[0].text


def test_chat_completions_stream_and_non_stream(client):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    reply = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert reply.choices[0].message.role == "assistant" and reply.usage.completion_tokens == 6
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reply.choices[0].message.content


def test_streamed_text_equals_vllm_offline_generate(server, client, request):
    if server.backend != "vllm":
        pytest.skip("compares the vllm backend with vLLM's own LLM.generate")
    offline_vllm_reference = request.getfixturevalue("offline_vllm_reference")
    for prompt, expected in offline_vllm_reference.items():
        pieces = [c.choices[0].text for c in client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=len(expected), temperature=0, stream=True,
            extra_body={"ignore_eos": True})]
        assert "".join(pieces) == server.tokenizer.decode(expected), prompt


def test_models_lists_the_served_model(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_api_key_is_enforced(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    resp = httpx.post(server.url + "/v1/completions", json={"prompt": "hi"})
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(server.url + "/health").json()["instances"] == 2  # probes need no key


@pytest.mark.parametrize(
    "body,status,needle",
    [
        ({"prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
        ({"prompt": "hi", "n": 2}, 400, "n=1"),
        ({"prompt": "hi", "temperature": "hot"}, 400, "temperature"),
        ({"max_tokens": 3}, 400, "prompt"),
        ({"prompt": "word " * 3000, "max_tokens": 3}, 400, "context"),
        ({"prompt": "word " * 3000, "max_tokens": 3, "stream": True}, 400, "context"),
        ({"prompt": "hi", "model": "gpt-9"}, 404, "does not exist"),
    ],
)
def test_bad_inputs_get_openai_style_4xx_and_the_server_keeps_serving(server, client, body, status, needle):
    resp = httpx.post(server.url + "/v1/completions", json=body, headers=auth(), timeout=60)
    assert resp.status_code == status
    assert needle in resp.json()["error"]["message"]
    assert client.completions.create(model=MODEL, prompt="still there?", max_tokens=2).choices[0].text is not None


def test_malformed_json_is_a_400(server):
    resp = httpx.post(server.url + "/v1/chat/completions", content=b"{not json", headers={
        **auth(), "Content-Type": "application/json"})
    assert resp.status_code == 400 and "error" in resp.json()


def test_client_disconnect_aborts_the_request(server):
    body = {"prompt": "Once upon a time", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, headers=auth(), timeout=60) as resp:
        lines = resp.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
    deadline = time.monotonic() + 60
    while True:  # the instance must stop generating for the client that went away
        rows = httpx.get(server.url + "/llumnix/snapshot", headers=auth()).json()["instances"]
        if sum(r["num_running"] + r["num_waiting"] for r in rows) == 0:
            break
        assert time.monotonic() < deadline, "request not aborted after the client disconnected"
        time.sleep(0.1)


def test_metrics_expose_latency_and_instance_state(server, client):
    client.completions.create(model=MODEL, prompt="metrics", max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    assert 'llumnix_ttft_seconds_count{priority="normal"}' in text
    assert "llumnix_instance_kv_usage{" in text and "llumnix_dispatch_latency_seconds_bucket" in text
    # The scheduler's own metrics are also at the Dask scheduler's /metrics, beside Dask's.
    dashboard = server.cluster.dashboard_link.rsplit("/status", 1)[0]
    text = httpx.get(dashboard + "/metrics").text
    assert 'llumnix_instance_freeness{instance="' in text and "llumnix_instances 2.0" in text
    assert "dask_scheduler_workers" in text
