"""The Python API on a real LocalCluster with real engines of each backend (the built-in tiny model)."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_helpers import BACKENDS, for_backend

from llumnix_dask import Cluster, EngineConfig, PolicyConfig

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

PROMPT = "Once upon a time"
# Small KV caches keep the worker processes light; migration on, balancing off unless a test turns it on.
ENGINE = EngineConfig(num_blocks=256, max_batch_size=16)


@pytest.fixture(scope="module", params=BACKENDS)
def cluster(request):
    engine = for_backend(request.param, ENGINE)
    with Cluster(2, engine=engine, policy=PolicyConfig(migration_enabled=False), dashboard_address=None) as c:
        yield c


def wait_until(cond, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s")
        time.sleep(0.05)


def idle(cluster) -> bool:
    df = cluster.instances()
    return int(df["num_running"].sum() + df["num_waiting"].sum()) == 0


def test_generate_and_stream_give_the_same_greedy_text(cluster):
    done = cluster.generate(PROMPT, max_tokens=12, ignore_eos=True, details=True)
    assert len(done.token_ids) == 12 and done.finish_reason == "length" and done.ttft > 0
    pieces = list(cluster.stream(PROMPT, max_tokens=12, ignore_eos=True))
    assert "".join(pieces) == done.text == cluster.generate(PROMPT, max_tokens=12, ignore_eos=True)


def test_greedy_tokens_equal_vllm_offline_generate(cluster, request):
    if cluster.engine_config.backend != "vllm":
        pytest.skip("compares the vllm backend with vLLM's own LLM.generate")
    offline_vllm_reference = request.getfixturevalue("offline_vllm_reference")
    for prompt, expected in offline_vllm_reference.items():
        done = cluster.generate(prompt, max_tokens=len(expected), ignore_eos=True, details=True)
        assert done.token_ids == expected, prompt


def test_a_list_of_prompts_gives_a_list_of_texts(cluster):
    texts = cluster.generate(["a", "bb", "ccc"], max_tokens=4, ignore_eos=True)
    assert isinstance(texts, list) and len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_astream_works_from_another_event_loop(cluster):
    async def collect():
        return [p async for p in cluster.astream(PROMPT, max_tokens=6, ignore_eos=True)]

    assert "".join(asyncio.run(collect())) == cluster.generate(PROMPT, max_tokens=6, ignore_eos=True)


def test_priority_and_slo_reach_the_scheduler(cluster):
    cluster.generate(PROMPT, max_tokens=3, priority="high", slo=30.0)
    reason = cluster.explain(1, kind="dispatch")["reason"].iloc[0]
    assert reason["high_priority"] is True
    wait_until(lambda: cluster.snapshot()["latency"]["high"]["ttft"]["count"] >= 1, what="latency report")
    assert cluster.snapshot()["latency"]["high"]["slo_attainment"] == 1.0


def test_a_burst_is_spread_over_the_instances(cluster):
    futures = [cluster.submit(f"request {i}", max_tokens=24, ignore_eos=True) for i in range(6)]
    first = [f.result(timeout=120).instances[0] for f in futures]
    assert set(first) == {"instance-0", "instance-1"}
    assert cluster.explain(6, kind="dispatch")["instance_id"].nunique() == 2


def test_forced_migration_mid_stream_keeps_every_token(cluster):
    reference = cluster.generate(PROMPT, max_tokens=120, ignore_eos=True, details=True)
    chunks, result = [], None
    for chunk in cluster.stream(PROMPT, max_tokens=120, ignore_eos=True, details=True):
        chunks.append(chunk)
        if len(chunks) == 5:
            result = cluster.migrate(chunk.request_id)
    assert result["ok"], result
    tokens = [t for c in chunks for t in c.token_ids]
    assert tokens == reference.token_ids
    assert [c.index for c in chunks] == list(range(len(chunks)))  # in order, each token once
    assert len({c.instance_id for c in chunks}) == 2
    log = cluster.migrations()
    assert log.iloc[-1]["request_id"] == chunks[0].request_id and bool(log.iloc[-1]["ok"])


def test_stopping_a_stream_early_aborts_the_request(cluster):
    stream = cluster.stream(PROMPT, max_tokens=1500, ignore_eos=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_until(lambda: idle(cluster), what="the aborted request leaving its instance")


def test_bad_requests_raise_clear_errors(cluster):
    with pytest.raises(ValueError, match="max_tokens"):
        cluster.generate(PROMPT, max_tokens=0)
    with pytest.raises(ValueError, match="prompt"):
        cluster.generate("", max_tokens=3)
    with pytest.raises(ValueError, match="context"):  # refused before it is dispatched
        cluster.generate("word " * 3000, max_tokens=3)
    with pytest.raises(ValueError, match="context"):  # prompt + max_tokens must fit, no silent truncation
        cluster.generate(PROMPT, max_tokens=10**9)
    with pytest.raises(ValueError, match="dispatch"):
        cluster.set_policy(dispatch="fastest")
    assert cluster.generate(PROMPT, max_tokens=2)  # still serving


def test_scale_up_then_down_with_drain_loses_no_request(cluster):
    cluster.scale(3)
    assert len(cluster.instances()) == 3
    n_tokens = 150
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(cluster.generate, f"story {i}", max_tokens=n_tokens, ignore_eos=True, details=True)
                   for i in range(6)]
        wait_until(lambda: int(cluster.instances()["num_running"].min()) >= 1, what="every instance busy")
        before = len(cluster.migrations())
        cluster.scale(2)  # drains one busy instance by live migration, then retires its worker
        done = [f.result(timeout=180) for f in futures]
    assert [len(d.token_ids) for d in done] == [n_tokens] * 6
    assert len(cluster.instances()) == 2
    drained = cluster.migrations().iloc[before:]
    assert len(drained) >= 1 and drained["ok"].all()
    assert (drained["transport"] == "dask").all() and (drained["blocks"] > 0).any()  # host-staged over Dask comm
    assert any(len(d.instances) > 1 for d in done)  # some request really moved


def test_adapt_scales_up_below_the_band_and_drains_down_above_it(cluster):
    # An idle instance here has freeness 256 (blocks per request): below x=300 -> add, above y=10 -> remove.
    cluster.adapt(1, 3, scale_up_freeness=300, scale_down_freeness=400, interval_s=0.2, patience_s=0)
    wait_until(lambda: len(cluster.instances()) == 3, timeout=120, what="auto-scaling up to 3")
    cluster.set_policy(scaling_enabled=False)
    # Dask's own downscaling may not close a worker whose instance serves (nothing is drained now).
    assert cluster.client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.workers_to_close(n=2)) == []
    cluster.adapt(1, 3, scale_up_freeness=0, scale_down_freeness=10, interval_s=0.2, patience_s=0)
    wait_until(lambda: len(cluster.instances()) == 1, timeout=120, what="auto-scaling down to 1")
    assert cluster.generate(PROMPT, max_tokens=3)
    kinds = set(cluster.explain(50)["kind"])
    assert {"scaling", "drain"} <= kinds
    cluster.set_policy(scaling_enabled=False)
