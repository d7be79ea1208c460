"""What a client sees: token streams, text deltas, and why a request stopped."""

from __future__ import annotations

from nano_helpers import make_engine, new_request, prompt, run_to_completion

from llumnix_dask.request import Request, RequestStatus, SamplingParams


def generate(engine, tokens, rid="x", **sampling):
    req = new_request(tokens, rid, **sampling)
    engine.add_request(req)
    outs = run_to_completion(engine)[rid]
    return req, outs


def test_text_deltas_concatenate_to_the_decoded_output(small_model):
    engine = make_engine(small_model)
    req, outs = generate(engine, engine.encode("The weather was cold in the"), max_tokens=40, temperature=1.0, seed=1)
    text = "".join(o.text_delta for o in outs)
    assert text == engine.decode(req.output_token_ids) and text
    assert [t for o in outs for t in o.new_token_ids] == req.output_token_ids
    assert [o.finished for o in outs] == [False] * 39 + [True]
    assert req.status is RequestStatus.FINISHED and req.finish_reason == outs[-1].finish_reason == "length"


def test_stop_token_ids_and_eos(small_model):
    engine = make_engine(small_model)
    ref, _ = generate(engine, prompt(8, 3), "ref", max_tokens=10, temperature=1.0, seed=5)
    stop_at = ref.output_token_ids[4]
    first = ref.output_token_ids.index(stop_at)

    req, outs = generate(engine, prompt(8, 3), "stop", max_tokens=10, temperature=1.0, seed=5, stop_token_ids=[stop_at])
    assert req.output_token_ids == ref.output_token_ids[: first + 1] and outs[-1].finish_reason == "stop"

    engine.eos_token_ids = frozenset({stop_at})  # pretend the model's EOS is that token
    req, _ = generate(engine, prompt(8, 3), "eos", max_tokens=10, temperature=1.0, seed=5, ignore_eos=False)
    assert req.output_token_ids == ref.output_token_ids[: first + 1] and req.finish_reason == "stop"
    req, _ = generate(engine, prompt(8, 3), "noeos", max_tokens=10, temperature=1.0, seed=5, ignore_eos=True)
    assert req.output_token_ids == ref.output_token_ids and req.finish_reason == "length"


def test_stop_string_cuts_the_text_and_is_never_streamed(small_model):
    engine = make_engine(small_model)
    ids = engine.encode("A serving system receives requests")
    ref, _ = generate(engine, ids, "ref", max_tokens=30, temperature=1.0, seed=11)
    full = engine.decode(ref.output_token_ids)
    stop = full[10:13]
    cut = full.index(stop)
    req, outs = generate(engine, ids, "s", max_tokens=30, temperature=1.0, seed=11, stop=[stop, "never-there"])
    assert "".join(o.text_delta for o in outs) == full[:cut]
    assert req.finish_reason == "stop" and req.num_output_tokens < 30
    assert ref.output_token_ids[: req.num_output_tokens] == req.output_token_ids


def test_generation_stops_at_the_context_length(small_model):
    engine = make_engine(small_model, max_model_len=20)
    req, outs = generate(engine, prompt(15, 1), max_tokens=100)
    assert req.num_tokens == 20 and outs[-1].finish_reason == "length"


def test_abort_frees_blocks_wherever_the_request_is(small_model):
    engine = make_engine(small_model, max_batch_size=1)
    running, queued = new_request(prompt(40, 1), "run", max_tokens=50), new_request(prompt(5, 2), "q", 1.0)
    engine.add_request(running)
    engine.add_request(queued)
    engine.step()
    assert engine.blocks.num_used > 0
    assert engine.abort("run") and engine.abort("q") and not engine.abort("nope")
    assert running.status is RequestStatus.ABORTED and running.finish_reason == "abort"
    assert queued.status is RequestStatus.ABORTED
    assert engine.blocks.num_used == 0 and not engine.has_work() and engine.get_request("run") is None


def test_requests_built_from_text_prompts(small_model):
    engine = make_engine(small_model)
    req = Request.new(engine.encode("hello"), SamplingParams(max_tokens=3, ignore_eos=True), prompt="hello")
    engine.add_request(req)
    assert engine.get_request(req.request_id) is req and req.instance_id == "i0"
    run_to_completion(engine)
    assert req.num_output_tokens == 3 and req.ttft is not None and req.first_token_time is not None
