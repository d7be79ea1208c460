import json

import numpy as np
import pytest

from llumnix_dask.workloads import (
    arrival_times, generate_trace, load_burstgpt, load_sharegpt, load_trace, trace_from_lengths, zipf_lengths,
)


@pytest.mark.parametrize("mean", [128, 256, 512])
def test_zipf_lengths_hit_target_mean_and_are_heavy_tailed(mean):
    v = zipf_lengths(mean, 200_000, np.random.default_rng(0))
    # Ceiling adds ~0.5 and clipping at 6144 trims the tail: the mean stays within a few percent.
    assert v.mean() == pytest.approx(mean, rel=0.05)
    assert v.min() >= 1 and v.max() <= 6144
    assert np.median(v) < mean / 2  # most requests are short...
    assert np.percentile(v, 99) > 5 * mean  # ...a few are very long


def test_zipf_needs_alpha_for_unknown_mean():
    with pytest.raises(ValueError, match="alpha"):
        zipf_lengths(300, 10, np.random.default_rng(0))
    assert zipf_lengths(300, 10, np.random.default_rng(0), alpha=1.3).shape == (10,)


def test_poisson_and_gamma_arrivals():
    rng = np.random.default_rng(1)
    p = np.diff(arrival_times(100_000, 5.0, rng), prepend=0)
    assert p.mean() == pytest.approx(0.2, rel=0.02) and p.std() / p.mean() == pytest.approx(1.0, rel=0.03)
    g = np.diff(arrival_times(200_000, 5.0, rng, "gamma", cv=4.0), prepend=0)
    assert g.mean() == pytest.approx(0.2, rel=0.05) and g.std() / g.mean() == pytest.approx(4.0, rel=0.1)


@pytest.mark.parametrize("kwargs,match", [
    ({"rate": -1.0}, "rate"), ({"rate": 0.0}, "rate"), ({"rate": 1.0, "arrival": "uniform"}, "arrival"),
    ({"rate": 1.0, "arrival": "gamma", "cv": 0}, "cv"),
])
def test_bad_arrival_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate_trace("S-S", 10, **kwargs)


def test_presets_seeded_and_priority_fraction():
    a = generate_trace("S-L", 2000, 4.0, high_priority_fraction=0.1, seed=3)
    b = generate_trace("S-L", 2000, 4.0, high_priority_fraction=0.1, seed=3)
    assert np.array_equal(a.input_lens, b.input_lens) and np.array_equal(a.arrival_s, b.arrival_s)
    assert a.high_priority.sum() == 200
    assert a.input_lens.mean() < 180 and a.output_lens.mean() > 400
    with pytest.raises(ValueError, match="unknown trace"):
        generate_trace("XL", 10, 1.0)
    with pytest.raises(ValueError, match="high_priority_fraction"):
        generate_trace("S-S", 10, 1.0, high_priority_fraction=1.5)


def test_sharegpt_json_and_jsonl(tmp_path):
    records = [
        {"id": "a", "conversations": [{"from": "human", "value": "hello there, how are you?"},
                                       {"from": "gpt", "value": "fine"}]},
        {"id": "b", "conversations": [{"from": "gpt", "value": "orphan"}]},  # no human->gpt pair
        {"id": "c", "conversations": [{"from": "human", "value": "one two three"},
                                       {"from": "gpt", "value": "a b c d e f"}]},
    ]
    j = tmp_path / "sg.json"
    j.write_text(json.dumps(records))
    jl = tmp_path / "sg.jsonl"
    jl.write_text("\n".join(json.dumps(r) for r in records))
    for path in (j, jl):
        ins, outs = load_sharegpt(path)
        assert ins.tolist() == [7, 3] and outs.tolist() == [1, 6]
    ins, outs = load_sharegpt(j, count_tokens=len)  # characters as "tokens"
    assert ins.tolist() == [25, 13]
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    with pytest.raises(ValueError, match="no human->gpt"):
        load_sharegpt(bad)
    trace = load_trace(str(jl), 50, 2.0, seed=0)
    assert len(trace) == 50 and set(trace.input_lens.tolist()) <= {7, 3}


def test_burstgpt_csv(tmp_path):
    p = tmp_path / "burst.csv"
    p.write_text("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                 "5,ChatGPT,472,18,490,Conversation log\n"
                 "45,ChatGPT,1087,0,1087,Conversation log\n"
                 "118,GPT-4,417,276,693,Conversation log\n"
                 "120,GPT-4,9000,10,9010,API log\n")
    ins, outs = load_burstgpt(p)
    assert ins.tolist() == [472, 417, 6144] and outs.tolist() == [18, 276, 10]
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="Request tokens"):
        load_burstgpt(bad)
    assert len(load_trace(str(p), 10, 1.0)) == 10
    with pytest.raises(ValueError, match="neither a preset"):
        load_trace(str(tmp_path / "missing.csv"), 10, 1.0)


def test_trace_from_lengths_validates():
    with pytest.raises(ValueError, match="lengths"):
        trace_from_lengths([1, 2], [3], 5, 1.0)
    with pytest.raises(ValueError, match="num_requests"):
        trace_from_lengths([1], [3], 0, 1.0)
