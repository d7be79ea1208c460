"""Random-weight Llama checkpoints in the Hugging Face format, built offline.

``make_tiny_model(dir)`` writes exactly what an HF Llama checkpoint holds: ``config.json``
(``architectures=["LlamaForCausalLM"]``), ``model.safetensors``, ``tokenizer.json`` (a byte-level BPE
trained on a small built-in text with the ``tokenizers`` library), ``tokenizer_config.json`` and
``generation_config.json``. So the same files load in this engine and in ``transformers``::

    >>> from llumnix_dask.config import TinyModelConfig
    >>> path = make_tiny_model("/tmp/tiny", TinyModelConfig(hidden_size=64, num_layers=2))  # doctest: +SKIP

``default_model_dir()`` builds the default tiny model once into ``$LLUMNIX_DASK_HOME/models`` (default
``~/.cache/llumnix-dask``) under a file lock, so ``EngineConfig(model=None)`` works with no network.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

from llumnix_dask.config import TinyModelConfig

BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<s>", "</s>", "<unk>"
# Bump when the files written here change, so an old cached default model is not reused.
TINY_FORMAT_VERSION = 3  # 2: unreadable byte tokens get small output rows; 3: untied output embedding


def llumnix_home() -> Path:
    """Cache directory of llumnix-dask (env ``LLUMNIX_DASK_HOME``, default ``~/.cache/llumnix-dask``)."""
    return Path(os.environ.get("LLUMNIX_DASK_HOME") or Path.home() / ".cache" / "llumnix-dask")


def build_tokenizer(vocab_size: int):
    """A byte-level BPE tokenizer (``tokenizers.Tokenizer``) trained on the built-in corpus.

    BPE stops merging when the corpus runs out of pairs, so the tokenizer may hold fewer than
    ``vocab_size`` entries; the model's embedding is then larger than the tokenizer (as in many HF
    checkpoints) and ids past the tokenizer decode to nothing.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from llumnix_dask.engine.nano.tiny_corpus import TINY_CORPUS

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS_TOKEN, EOS_TOKEN, UNK_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TINY_CORPUS.splitlines(), trainer=trainer)
    bos_id = tok.token_to_id(BOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, bos_id)])
    return tok


def _random_weights(cfg: TinyModelConfig) -> dict:
    """HF-named Llama weights. Scales keep activations O(1) so attention is sharp and logits spread out
    (near-uniform attention or near-tied logits would hide bugs in the tests)."""
    import torch

    g = torch.Generator().manual_seed(cfg.seed)
    h, inter = cfg.hidden_size, cfg.intermediate_size
    head_dim = h // cfg.num_heads
    kv = cfg.num_kv_heads * head_dim

    def linear(out_f: int, in_f: int) -> "torch.Tensor":
        return torch.randn(out_f, in_f, generator=g) / in_f**0.5

    def norm() -> "torch.Tensor":
        return 1.0 + 0.1 * torch.randn(h, generator=g)

    # std 0.25: tied logits come out with std ~0.25 * sqrt(hidden), peaked but not one-hot at temperature 1.
    w = {"model.embed_tokens.weight": 0.25 * torch.randn(cfg.vocab_size, h, generator=g)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = linear(h, h)
        w[p + "self_attn.k_proj.weight"] = linear(kv, h)
        w[p + "self_attn.v_proj.weight"] = linear(kv, h)
        w[p + "self_attn.o_proj.weight"] = linear(h, h)
        w[p + "mlp.gate_proj.weight"] = linear(inter, h)
        w[p + "mlp.up_proj.weight"] = linear(inter, h)
        w[p + "mlp.down_proj.weight"] = linear(h, inter)
        w[p + "input_layernorm.weight"] = norm()
        w[p + "post_attention_layernorm.weight"] = norm()
    w["model.norm.weight"] = norm()
    if not cfg.tie_word_embeddings:
        # Logits with std ~4, as with the tied embedding: sharp enough that the quieted rows are rarely sampled.
        w["lm_head.weight"] = linear(cfg.vocab_size, h) * 4.0
    return {k: v.contiguous() for k, v in w.items()}


# Output rows of tokens that do not decode to readable text on their own are scaled by this.
UNREADABLE_TOKEN_SCALE = 0.1


def _readable(text: str) -> bool:
    return bool(text) and "\ufffd" not in text and all(c.isprintable() or c in "\n\t" for c in text)


def _quiet_unreadable_tokens(weights: dict, tok, cfg: TinyModelConfig) -> None:
    """Shrink the output rows of byte tokens that are not text by themselves (partial UTF-8 sequences,
    control bytes) and of embedding rows past the tokenizer, so a random model's sampled output reads as
    printable text instead of replacement characters. Special tokens (BOS/EOS) are left as they are."""
    special = {tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)}
    n_tok = tok.get_vocab_size()
    quiet = [i for i in range(cfg.vocab_size)
             if i not in special and (i >= n_tok or not _readable(tok.decode([i], skip_special_tokens=False)))]
    name = "model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"
    weights[name][quiet] *= UNREADABLE_TOKEN_SCALE


def make_tiny_model(directory: str | os.PathLike, config: TinyModelConfig | None = None) -> Path:
    """Write a random-weight ``LlamaForCausalLM`` checkpoint (HF format) into ``directory``."""
    from safetensors.torch import save_file

    cfg = config or TinyModelConfig()
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(cfg.vocab_size)
    bos_id, eos_id = tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)
    hf_config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.hidden_size // cfg.num_heads,
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
        "use_cache": True,
        "llumnix_tiny_format": TINY_FORMAT_VERSION,
    }
    (out / "config.json").write_text(json.dumps(hf_config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": bos_id, "eos_token_id": eos_id, "do_sample": False}, indent=2)
    )
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": BOS_TOKEN,
                "eos_token": EOS_TOKEN,
                "unk_token": UNK_TOKEN,
                "model_max_length": cfg.max_position_embeddings,
                "clean_up_tokenization_spaces": False,
            },
            indent=2,
        )
    )
    weights = _random_weights(cfg)
    _quiet_unreadable_tokens(weights, tok, cfg)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def default_model_dir() -> Path:
    """Directory of the built-in tiny model, built on first use (safe across processes: file lock)."""
    root = llumnix_home() / "models"
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"tiny-llama-v{TINY_FORMAT_VERSION}"
    done = target / ".complete"
    if done.exists():
        return target
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                # Build aside and rename, so a crash never leaves a half-written model behind.
                tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=root))
                try:
                    make_tiny_model(tmp, TinyModelConfig())
                    (tmp / ".complete").write_text("ok\n")
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(tmp, target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return target
