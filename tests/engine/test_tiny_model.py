"""`llumnix-dask make-tiny-model` writes a real HF checkpoint; the default model builds itself offline."""

from __future__ import annotations

import json
import threading

import pytest
from typer.testing import CliRunner

from llumnix_dask.cli import app
from llumnix_dask.config import EngineConfig
from llumnix_dask.engine import create_engine
from llumnix_dask.request import Request, SamplingParams


def test_make_tiny_model_cli_writes_an_hf_checkpoint(tmp_path):
    out = tmp_path / "m"
    args = ["make-tiny-model", str(out), "--hidden-size", "48", "--layers", "3", "--heads", "6", "--kv-heads", "2",
            "--intermediate-size", "96", "--vocab-size", "400", "--seed", "4", "--no-tie-word-embeddings"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["intermediate_size"], cfg["vocab_size"], cfg["tie_word_embeddings"]) == (48, 3, 6, 2, 96, 400, False)
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file()

    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out))
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()  # untied
    assert tok.decode(tok("hello world")["input_ids"], skip_special_tokens=True) == "hello world"

    bad = CliRunner().invoke(app, ["make-tiny-model", str(tmp_path / "bad"), "--heads", "3"])
    assert bad.exit_code != 0 and "num_heads" in bad.output


def test_default_model_is_built_once_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("LLUMNIX_DASK_HOME", str(tmp_path))
    from llumnix_dask.engine.nano.tiny_model import default_model_dir

    # Two threads race to build it: the file lock lets one build and the other reuse it.
    dirs = []
    threads = [threading.Thread(target=lambda: dirs.append(default_model_dir())) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert dirs[0] == dirs[1] and dirs[0].parent == tmp_path / "models"
    stamp = (dirs[0] / "model.safetensors").stat().st_mtime_ns
    assert [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".tiny-")] == []

    engine = create_engine(EngineConfig(), "i0")  # model=None: the built-in tiny model
    assert (dirs[0] / "model.safetensors").stat().st_mtime_ns == stamp
    assert 1e6 < engine.model_args.num_params < 10e6
    req = Request.new(engine.encode("Hello"), SamplingParams(max_tokens=5, ignore_eos=True))
    engine.add_request(req)
    while engine.has_work():
        engine.step()
    assert req.num_output_tokens == 5


def test_num_blocks_follow_the_kv_cache_budget(small_model):
    from llumnix_dask.engine.nano.engine import NanoEngine

    engine = NanoEngine(EngineConfig(model=small_model, kv_cache_bytes=1 << 20, block_size=16), "i0")
    a = engine.model_args
    per_block = 2 * a.num_layers * a.num_kv_heads * a.head_dim * 4 * 16  # K and V, float32
    assert engine.num_blocks == (1 << 20) // per_block == engine.load().total_blocks
    assert engine.cache.bytes_per_block == per_block


def test_default_model_output_reads_as_printable_text():
    # Random weights give nonsense, but a demo's output must not be replacement characters and control bytes.
    engine = create_engine(EngineConfig(num_blocks=64), "readable")
    texts = []
    for i, temperature in enumerate((0.0, 1.0, 1.0)):
        req = Request.new(engine.encode("Once upon a time"),
                          SamplingParams(max_tokens=48, temperature=temperature, seed=i, ignore_eos=True))
        engine.add_request(req)
        text = ""
        while engine.has_work():
            text += "".join(o.text_delta for o in engine.step())
        texts.append(text)
    for text in texts:
        assert text and "\ufffd" not in text
        assert all(c.isprintable() or c in "\n\t" for c in text), repr(text)
