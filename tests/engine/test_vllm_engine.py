"""The vllm backend as an engine: the same tokens as vLLM's own offline API, llumnix-dask's stop rules,
load reports from vLLM's scheduler and KV-cache manager, and clear errors."""

from __future__ import annotations

import dataclasses

import pytest

from llumnix_dask.config import EngineConfig
from llumnix_dask.engine import create_engine
from llumnix_dask.request import Request, RequestStatus, SamplingParams

pytestmark = pytest.mark.vllm

CONFIG = EngineConfig(backend="vllm", block_size=32, num_blocks=64, max_batch_size=8, vllm_args={"enforce_eager": True})
PROMPTS = ["Once upon a time", "The river flowed past the old mill", "hello", "A story about a dragon and a king"]


@pytest.fixture(scope="module")
def engine():
    eng = create_engine(CONFIG, "v0")
    yield eng
    eng.close()


def run(engine, *requests):
    for r in requests:
        engine.add_request(r)
    text: dict[str, str] = {}
    while engine.has_work():
        for out in engine.step():
            text[out.request_id] = text.get(out.request_id, "") + out.text_delta
    return text


def greedy(engine, prompt: str, n: int = 32, **kw) -> Request:
    return Request.new(engine.encode(prompt), SamplingParams(max_tokens=n, ignore_eos=True, **kw))


def test_greedy_tokens_equal_vllm_offline_generate(engine, tmp_path):
    from vllm_reference import offline_greedy

    token_prompts = [[(37 * i + 11 * j) % 480 + 3 for j in range(20 + 9 * i)] for i in range(4)]
    ref = offline_greedy(engine.model_path, tmp_path, texts=PROMPTS, token_prompts=token_prompts, max_tokens=32)
    ours_text = [greedy(engine, p) for p in PROMPTS]
    ours_ids = [Request.new(p, SamplingParams(max_tokens=32, ignore_eos=True)) for p in token_prompts]
    run(engine, *ours_text, *ours_ids)
    assert [r.prompt_token_ids for r in ours_text] == ref["text_prompt_ids"]  # same tokenization
    assert [r.output_token_ids for r in ours_text] == ref["texts"]
    assert [r.output_token_ids for r in ours_ids] == ref["token_prompts"]
    assert all(len(set(r.output_token_ids)) > 4 for r in ours_ids)  # the model's output varies


def test_stop_strings_eos_and_length(engine):
    free = greedy(engine, PROMPTS[1], 40)
    text = run(engine, free)[free.request_id]
    stop_at = text[len(text) // 2:][:2]
    stopped = greedy(engine, PROMPTS[1], 40, stop=(stop_at,))
    got = run(engine, stopped)[stopped.request_id]
    assert stopped.finish_reason == "stop" and got == text[: text.index(stop_at)]
    first = free.output_token_ids[3]
    by_id = greedy(engine, PROMPTS[1], 40, stop_token_ids=(first,))
    run(engine, by_id)
    assert by_id.finish_reason == "stop" and by_id.output_token_ids == free.output_token_ids[: 4]
    assert free.finish_reason == "length" and free.num_output_tokens == 40
    assert free.status is RequestStatus.FINISHED and engine.get_request(free.request_id) is None


def test_end_of_sequence_stops_unless_ignored(engine):
    eos = min(engine.eos_token_ids)
    prompt = engine.encode(PROMPTS[0])
    probe = Request.new(prompt, SamplingParams(max_tokens=6, ignore_eos=True, stop_token_ids=()))
    run(engine, probe)
    # Make EOS the 3rd token by declaring that token an end-of-sequence id for this engine.
    engine.eos_token_ids = frozenset({probe.output_token_ids[2]})
    try:
        stops = Request.new(prompt, SamplingParams(max_tokens=6))
        ignores = Request.new(prompt, SamplingParams(max_tokens=6, ignore_eos=True))
        run(engine, stops, ignores)
    finally:
        engine.eos_token_ids = frozenset({eos})
    assert stops.finish_reason == "stop" and stops.num_output_tokens == 3
    assert ignores.finish_reason == "length" and ignores.output_token_ids == probe.output_token_ids


def test_load_reports_running_queued_and_blocks(engine):
    reqs = [greedy(engine, f"{p} {i}", 40) for i, p in enumerate(PROMPTS * 3)]  # 12 > max_batch_size 8
    for r in reqs:
        engine.add_request(r)
    load = engine.load()
    assert load.num_waiting == 12 and load.used_blocks == 0 and load.total_blocks == 64
    engine.step()
    load = engine.load()
    assert load.num_running == 8 and load.num_waiting == 4
    assert load.used_blocks == sum(r.blocks for r in load.running) > 0
    assert all(r.blocks == -(-r.num_tokens // 32) for r in load.waiting)  # queued demand in blocks
    assert sum(r.status is RequestStatus.RUNNING for r in reqs) == 8
    run(engine)
    assert engine.load().used_blocks == 0 and all(r.status is RequestStatus.FINISHED for r in reqs)


def test_a_full_cache_preempts_the_latest_arrival_and_it_recomputes(engine):
    early, late = greedy(engine, PROMPTS[0], 60), greedy(engine, PROMPTS[3], 60)
    early.arrival_time, late.arrival_time = 1.0, 2.0
    reference = [greedy(engine, PROMPTS[0], 60), greedy(engine, PROMPTS[3], 60)]
    run(engine, *reference)
    engine.add_request(early)
    engine.add_request(late)
    engine.step()
    hog = engine.reserve_blocks(engine.load().total_blocks - engine.load().used_blocks)  # the cache is full
    before = engine.num_preemptions
    while late.status is RequestStatus.RUNNING:
        engine.step()
    assert engine.num_preemptions == before + 1 and late.num_preemptions == 1
    assert early.status is RequestStatus.RUNNING
    assert any(r.preempted for r in engine.load().waiting)
    engine.free_blocks(hog)
    run(engine)
    assert [early.output_token_ids, late.output_token_ids] == [r.output_token_ids for r in reference]


def test_abort_frees_the_blocks(engine):
    req = greedy(engine, PROMPTS[2], 200)
    engine.add_request(req)
    for _ in range(3):
        engine.step()
    assert engine.load().used_blocks > 0
    assert engine.abort(req.request_id) and not engine.abort(req.request_id)
    assert req.status is RequestStatus.ABORTED and engine.load().used_blocks == 0 and not engine.has_work()


def test_bad_requests_are_refused_with_the_reason(engine):
    with pytest.raises(ValueError, match="context"):
        engine.add_request(Request.new([5] * engine.max_model_len, SamplingParams(max_tokens=2)))
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request(Request.new([10**6], SamplingParams(max_tokens=2)))
    req = greedy(engine, "twice", 2)
    engine.add_request(req)
    with pytest.raises(ValueError, match="already"):
        engine.add_request(dataclasses.replace(req))
    run(engine)


def test_unknown_or_reserved_vllm_arguments_are_refused():
    with pytest.raises(ValueError, match="tensor_parallel_size"):
        create_engine(dataclasses.replace(CONFIG, vllm_args={"tensor_paralel_size": 1}), "bad")
    with pytest.raises(ValueError, match="set by the vllm backend"):
        create_engine(dataclasses.replace(CONFIG, vllm_args={"async_scheduling": True}), "bad")


def test_seeded_sampling_depends_on_seed_and_position_only(engine):
    """A seeded request draws the same tokens whether its prompt is prefilled at once or in 32-token chunks
    (vLLM 0.32 itself fails on a CPU when it discards a draw of a partial prefill)."""
    chunked = create_engine(dataclasses.replace(CONFIG, max_batched_tokens=32), "chunked")
    try:
        prompt = [(13 * j) % 480 + 3 for j in range(150)]
        outputs = []
        for eng in (engine, chunked):
            req = Request.new(prompt, SamplingParams(max_tokens=24, temperature=1.0, seed=5, ignore_eos=True))
            run(eng, req)
            outputs.append(req.output_token_ids)
        other_seed = Request.new(prompt, SamplingParams(max_tokens=24, temperature=1.0, seed=6, ignore_eos=True))
        run(engine, other_seed)
    finally:
        chunked.close()
    assert outputs[0] == outputs[1] and len(set(outputs[0])) > 4
    assert other_seed.output_token_ids != outputs[0]
