"""Bad input gets a clear error that says what is wrong."""

from __future__ import annotations

import json

import pytest
from nano_helpers import make_engine, new_request, prompt

from llumnix_dask.config import EngineConfig, TinyModelConfig
from llumnix_dask.engine import create_engine
from llumnix_dask.request import Request, SamplingParams


def test_unknown_model_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        create_engine(EngineConfig(model=str(tmp_path / "nope")), "i0")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        create_engine(EngineConfig(model=str(tmp_path)), "i0")


def test_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="unsupported architecture.*GPT2LMHeadModel"):
        create_engine(EngineConfig(model=str(tmp_path)), "i0")


def test_missing_weights(small_model, tmp_path):
    (tmp_path / "config.json").write_text(open(f"{small_model}/config.json").read())
    with pytest.raises(FileNotFoundError, match="safetensors"):
        make_engine(str(tmp_path))


def test_prompt_longer_than_the_context(small_model):
    engine = make_engine(small_model, max_model_len=32)
    with pytest.raises(ValueError, match="32 tokens do not fit the context of 32"):
        engine.add_request(new_request(prompt(32, 1), "long"))
    engine.add_request(new_request(prompt(31, 1), "fits"))


def test_prompt_longer_than_the_kv_cache(small_model):
    engine = make_engine(small_model, num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="KV cache=8 tokens"):
        engine.add_request(new_request(prompt(8, 1), "big"))


def test_empty_prompt_and_bad_token_ids(small_model):
    engine = make_engine(small_model)
    with pytest.raises(ValueError, match="prompt: must not be empty"):
        Request.new([], SamplingParams())
    with pytest.raises(ValueError, match="prompt: must not be empty"):
        engine.add_request(Request(request_id="e", prompt_token_ids=[]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 300\)"):
        engine.add_request(new_request([1, 300], "oov"))


@pytest.mark.parametrize(
    "kwargs, field", [({"max_tokens": 0}, "max_tokens"), ({"temperature": -0.5}, "temperature"),
                      ({"top_p": 0.0}, "top_p"), ({"top_p": 1.5}, "top_p")]
)
def test_bad_sampling_params(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_duplicate_request_id(small_model):
    engine = make_engine(small_model)
    engine.add_request(new_request(prompt(4, 1), "dup"))
    with pytest.raises(ValueError, match="already on instance"):
        engine.add_request(new_request(prompt(4, 1), "dup"))


def test_bad_engine_and_tiny_model_configs(small_model):
    with pytest.raises(ValueError, match="max_model_len"):
        make_engine(small_model, max_model_len=10**6)
    with pytest.raises(ValueError, match="EngineConfig.dtype"):
        EngineConfig(dtype="int8")
    with pytest.raises(ValueError, match="num_kv_heads"):
        TinyModelConfig(num_heads=4, num_kv_heads=3)
