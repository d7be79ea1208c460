"""A random mix of arrivals, aborts, pauses/resumes and tight memory keeps the block accounting exact and
never changes what a surviving request generates."""

from __future__ import annotations

import random

from nano_helpers import make_engine, new_request, prompt, run_to_completion

from llumnix_dask.request import RequestStatus


def check_blocks(engine) -> None:
    held = [b for s in engine.scheduler.running for b in s.block_ids]
    held += [b for s in engine._paused.values() for b in s.block_ids]
    held += list(engine.blocks.reserved)
    assert len(held) == len(set(held)), "a block is owned twice"
    assert len(held) == engine.blocks.num_used
    assert all(not s.block_ids for s in engine.scheduler.waiting)


def test_random_workload_keeps_accounting_and_outputs(small_model):
    rng = random.Random(0)
    specs = []
    for i in range(14):
        sampling = {"temperature": 1.2, "seed": i} if i % 2 else {}
        specs.append((f"w{i}", prompt(rng.randint(1, 30), i), rng.randint(1, 20), sampling))

    expected = {}
    for rid, toks, n, sampling in specs:
        alone = make_engine(small_model)
        req = new_request(toks, rid, max_tokens=n, **sampling)
        alone.add_request(req)
        run_to_completion(alone)
        expected[rid] = req.output_token_ids

    engine = make_engine(small_model, block_size=4, num_blocks=24, max_batch_size=5, max_batched_tokens=16)
    reqs, aborted, pending = {}, set(), list(specs)
    for step in range(2000):
        if pending and rng.random() < 0.3:
            rid, toks, n, sampling = pending.pop(0)
            reqs[rid] = new_request(toks, rid, arrival=float(step), max_tokens=n, **sampling)
            engine.add_request(reqs[rid])
        running = [s.request_id for s in engine.scheduler.running]
        if running and rng.random() < 0.03:
            victim = rng.choice(running)
            assert engine.abort(victim)
            aborted.add(victim)
        elif running and rng.random() < 0.1:
            rid = rng.choice(running)
            engine.pause(rid)
            check_blocks(engine)
            engine.step()  # the paused request sits out this step
            engine.resume(rid)
        engine.step()
        check_blocks(engine)
        if not pending and not engine.has_work():
            break
    assert not engine.has_work() and engine.blocks.num_used == 0
    assert engine.load().num_preemptions > 0 and aborted  # memory really was tight; aborts happened
    for rid, req in reqs.items():
        if rid in aborted:
            assert req.status is RequestStatus.ABORTED
        else:
            assert req.status is RequestStatus.FINISHED and req.output_token_ids == expected[rid], rid
