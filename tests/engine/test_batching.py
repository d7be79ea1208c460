"""Continuous batching gives every request the tokens it would get alone: batch size, chunked prefill,
preemption by recompute and repeated runs never change the output (greedy, or seeded sampling)."""

from __future__ import annotations

import pytest
from nano_helpers import make_engine, new_request, prompt, run_to_completion

GREEDY = dict(temperature=0.0)
SEEDED = dict(temperature=1.5, top_k=40, top_p=0.9)

LENGTHS = [5, 17, 33, 9, 24, 2]


def requests(sampling: dict, max_tokens: int = 12):
    out = []
    for i, n in enumerate(LENGTHS):
        extra = {"seed": 100 + i} if sampling is SEEDED else {}
        out.append(new_request(prompt(n, i), f"r{i}", arrival=float(i), max_tokens=max_tokens, **sampling, **extra))
    return out


def alone(model: str, sampling: dict, max_tokens: int = 12) -> dict[str, list[int]]:
    """Each request run by itself in a fresh engine with plenty of blocks."""
    result = {}
    for r in requests(sampling, max_tokens):
        engine = make_engine(model)
        engine.add_request(r)
        run_to_completion(engine)
        result[r.request_id] = r.output_token_ids
    return result


@pytest.fixture(scope="module")
def reference(small_model):
    return {"greedy": alone(small_model, GREEDY), "seeded": alone(small_model, SEEDED)}


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_batched_equals_alone(small_model, reference, mode):
    engine = make_engine(small_model)
    reqs = requests(GREEDY if mode == "greedy" else SEEDED)
    for r in reqs:
        engine.add_request(r)
    run_to_completion(engine)
    assert {r.request_id: r.output_token_ids for r in reqs} == reference[mode]
    assert all(r.finish_reason == "length" and r.num_output_tokens == 12 for r in reqs)


def test_seeded_runs_repeat_and_seeds_matter(small_model, reference):
    again = alone(small_model, SEEDED)
    assert again == reference["seeded"]
    # A different seed gives a different stream (so the test above can fail).
    engine = make_engine(small_model)
    other = [new_request(r.prompt_token_ids, r.request_id, seed=999 + i, max_tokens=12, **SEEDED)
             for i, r in enumerate(requests(SEEDED))]
    for r in other:
        engine.add_request(r)
    run_to_completion(engine)
    assert {r.request_id: r.output_token_ids for r in other} != reference["seeded"]


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_chunked_prefill_equals_whole_prefill(small_model, reference, mode):
    engine = make_engine(small_model, max_batched_tokens=7)
    reqs = requests(GREEDY if mode == "greedy" else SEEDED)
    for r in reqs:
        engine.add_request(r)
    run_to_completion(engine)
    assert {r.request_id: r.output_token_ids for r in reqs} == reference[mode]


@pytest.mark.parametrize("mode", ["greedy", "seeded"])
def test_preempted_requests_recompute_to_the_same_tokens(small_model, reference, mode):
    # 14 blocks of 4 tokens cannot hold six requests of up to 33 + 12 tokens: the youngest get preempted.
    engine = make_engine(small_model, block_size=4, num_blocks=14)
    reqs = requests(GREEDY if mode == "greedy" else SEEDED)
    for r in reqs:
        engine.add_request(r)
    run_to_completion(engine)
    assert engine.load().num_preemptions > 0
    preempted = [r for r in reqs if r.num_preemptions > 0]
    assert preempted and all(any(e.detail == "recompute" for e in r.events) for r in preempted)
    assert {r.request_id: r.output_token_ids for r in reqs} == reference[mode]
    assert engine.blocks.num_free == engine.num_blocks  # everything returned


def test_youngest_running_request_is_the_one_preempted(small_model):
    engine = make_engine(small_model, block_size=4, num_blocks=8)
    old = new_request(prompt(12, 1), "old", arrival=0.0, max_tokens=16)
    young = new_request(prompt(12, 2), "young", arrival=1.0, max_tokens=16)
    engine.add_request(young)
    engine.add_request(old)
    run_to_completion(engine)
    assert old.num_preemptions == 0 and young.num_preemptions >= 1


def test_fcfs_by_arrival_time(small_model):
    engine = make_engine(small_model, max_batch_size=1)
    reqs = [new_request(prompt(6, i), f"q{i}", arrival=float(t), max_tokens=3) for i, t in enumerate([3, 1, 2, 0])]
    for r in reqs:
        engine.add_request(r)
    order = []
    while engine.has_work():
        order += [o.request_id for o in engine.step() if o.finished]
    assert order == ["q3", "q1", "q2", "q0"]


def test_load_reports_running_and_queued_requests(small_model):
    engine = make_engine(small_model, block_size=4, max_batch_size=2)
    reqs = [new_request(prompt(10, i), f"l{i}", arrival=float(i), max_tokens=5) for i in range(3)]
    for r in reqs:
        engine.add_request(r)
    load = engine.load()
    assert (load.num_running, load.num_waiting, load.used_blocks) == (0, 3, 0)
    assert load.waiting[0].blocks == 3  # 10 tokens in blocks of 4
    engine.step()
    load = engine.load()
    assert [r.request_id for r in load.running] == ["l0", "l1"]
    assert [r.request_id for r in load.waiting] == ["l2"]
    assert load.used_blocks == load.running_blocks == 6
    assert load.running[0].num_tokens == 11 and load.total_blocks == engine.num_blocks
