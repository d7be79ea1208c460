"""The paged engine computes the same logits as a dense, cache-free reference forward
(Hugging Face transformers loading the very same checkpoint directory)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from nano_helpers import make_engine, new_request, prompt

from llumnix_dask.engine.nano.batch import SeqChunk, build_forward_batch

transformers = pytest.importorskip("transformers")

ATOL = 2e-4


def assert_close_cpu(actual: torch.Tensor, expected: torch.Tensor, **kw) -> None:
    """The engine may run on CUDA (device "auto"); the dense reference runs on the CPU."""
    torch.testing.assert_close(actual.cpu(), expected.cpu(), **kw)


def hf_logits(model_dir: str, tokens: list[int]) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return model(torch.tensor([tokens])).logits[0].float()


@pytest.mark.parametrize("which", ["small_model", "untied_model"])
def test_prefill_logits_match_dense_reference(request, which):
    """Two prompts of different lengths in one padded prefill, with blocks scattered over the cache."""
    model_dir = request.getfixturevalue(which)
    engine = make_engine(model_dir)
    p1, p2 = prompt(37, 1), prompt(20, 2)
    chunks = [SeqChunk(p1, 0, [9, 3, 17], True), SeqChunk(p2, 0, [4, 11], True)]
    with torch.inference_mode():
        batch = build_forward_batch(chunks, engine.block_size, engine.device, all_logits=True)
        logits = engine.model.forward(batch, engine.cache)
    assert_close_cpu(logits[:37], hf_logits(model_dir, p1), atol=ATOL, rtol=1e-4)
    assert_close_cpu(logits[37:], hf_logits(model_dir, p2), atol=ATOL, rtol=1e-4)


def test_engine_logits_match_reference_for_prefill_and_32_decode_steps(small_model):
    """Through the whole engine: prefill chunked over two steps, then 32 batched decode steps."""
    engine = make_engine(small_model, max_batched_tokens=24, block_size=8)
    engine.capture_logits = True
    reqs = [new_request(prompt(30, 5), "a", max_tokens=33), new_request(prompt(9, 6), "b", arrival=1.0, max_tokens=33)]
    for r in reqs:
        engine.add_request(r)
    while engine.has_work():
        engine.step()
    for r in reqs:
        captured = torch.stack(engine.captured_logits[r.request_id])
        assert captured.shape[0] == 33  # 1 after prefill + 32 decode steps
        ref = hf_logits(small_model, r.all_token_ids[:-1])[r.num_prompt_tokens - 1 :]
        assert_close_cpu(captured, ref, atol=ATOL, rtol=1e-4)
        assert r.output_token_ids == ref.argmax(-1).tolist()  # greedy picks the reference's argmax


def _qwen2_checkpoint(src: str, dst: Path) -> str:
    """The small model turned into a Qwen2-style checkpoint (QKV bias)."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (dst / name).write_text((Path(src) / name).read_text())
    cfg = json.loads((Path(src) / "config.json").read_text())
    cfg.update(architectures=["Qwen2ForCausalLM"], model_type="qwen2", use_sliding_window=False, sliding_window=None)
    (dst / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(Path(src) / "model.safetensors"))
    g = torch.Generator().manual_seed(0)
    for key in list(weights):
        if key.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
            weights[key.replace("weight", "bias")] = 0.5 * torch.randn(weights[key].shape[0], generator=g)
    save_file(weights, str(dst / "model.safetensors"))
    return str(dst)


def test_qwen2_style_attention_bias_matches_reference(small_model, tmp_path):
    model_dir = _qwen2_checkpoint(small_model, tmp_path / "qwen2")
    engine = make_engine(model_dir)
    engine.capture_logits = True
    req = new_request(prompt(21, 7), "q", max_tokens=5)
    engine.add_request(req)
    while engine.has_work():
        engine.step()
    ref = hf_logits(model_dir, req.all_token_ids[:-1])[req.num_prompt_tokens - 1 :]
    assert_close_cpu(torch.stack(engine.captured_logits["q"]), ref, atol=ATOL, rtol=1e-4)


def test_sharded_checkpoint_loads_like_single_file(small_model, tmp_path):
    """HF shards: model-0000x-of-0000y.safetensors + model.safetensors.index.json."""
    from safetensors.torch import load_file, save_file

    dst = tmp_path / "sharded"
    dst.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        (dst / name).write_text((Path(small_model) / name).read_text())
    weights = load_file(str(Path(small_model) / "model.safetensors"))
    keys = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for fname, ks in shards.items():
        save_file({k: weights[k] for k in ks}, str(dst / fname))
        weight_map.update({k: fname for k in ks})
    (dst / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    outs = []
    for model_dir in (small_model, str(dst)):
        engine = make_engine(model_dir)
        req = new_request(prompt(12, 8), "s", max_tokens=8)
        engine.add_request(req)
        while engine.has_work():
            engine.step()
        outs.append(req.output_token_ids)
    assert outs[0] == outs[1]


@pytest.mark.parametrize(
    "scaling",
    [
        {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
         "original_max_position_embeddings": 32},
        {"rope_type": "linear", "factor": 4.0},
    ],
    ids=["llama3", "linear"],
)
def test_rope_scaling_matches_reference(small_model, tmp_path, scaling):
    """Llama-3 style and linear RoPE scaling, at positions past the original context."""
    dst = tmp_path / "scaled"
    dst.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors"):
        (dst / name).write_bytes((Path(small_model) / name).read_bytes())
    cfg = json.loads((Path(small_model) / "config.json").read_text())
    cfg["rope_scaling"] = scaling
    (dst / "config.json").write_text(json.dumps(cfg))
    engine = make_engine(str(dst))
    engine.capture_logits = True
    req = new_request(prompt(70, 9), "r", max_tokens=6)
    engine.add_request(req)
    while engine.has_work():
        engine.step()
    ref = hf_logits(str(dst), req.all_token_ids[:-1])[req.num_prompt_tokens - 1 :]
    assert_close_cpu(torch.stack(engine.captured_logits["r"]), ref, atol=ATOL, rtol=1e-4)
    plain = make_engine(small_model)
    plain.capture_logits = True
    plain.add_request(new_request(prompt(70, 9), "r", max_tokens=1))
    plain.step()
    assert not torch.allclose(plain.captured_logits["r"][0].cpu(), ref[0].cpu(), atol=1e-2)  # scaling changed the result
