"""Load a Hugging Face Llama-family checkpoint: config.json + *.safetensors (sharded too) + tokenizer.json.

Supported architectures: Llama (incl. Llama-3 rope scaling), Mistral (full attention only) and
Qwen2 (attention bias). Weights are returned fused the way the nano model runs them (one QKV matrix,
one gate+up matrix per layer)::

    >>> ckpt = load_checkpoint("/path/to/model", dtype=torch.float32, device="cpu")  # doctest: +SKIP
    >>> ckpt.args.num_layers, ckpt.tokenizer is not None                                # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llumnix_dask.engine.hf_files import load_tokenizer_file, merge_token_ids
from llumnix_dask.engine.nano.linear import Linear

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")


@dataclass(frozen=True)
class ModelArgs:
    """The shape of a Llama-family model, read from config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    architecture: str
    rope_scaling: tuple[tuple[str, Any], ...] | None = None  # sorted items of config.json's rope_scaling
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    @property
    def num_params(self) -> int:
        h, kv = self.hidden_size, self.num_kv_heads * self.head_dim
        q = self.num_heads * self.head_dim
        per_layer = h * (q + 2 * kv) + q * h + 3 * h * self.intermediate_size + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * per_layer + h + head

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes of K and V cache one token takes over all layers."""
        elem = torch.empty((), dtype=dtype).element_size()
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * elem


@dataclass
class LayerWeights:
    qkv: Linear  # fused q, k, v projections: [(H + 2*KVH) * D, hidden] (+ bias for Qwen2)
    o: Linear  # (+ bias for Llama with attention_bias=True)
    gate_up: Linear  # fused SwiGLU gate and up: [2 * intermediate, hidden]
    down: Linear
    input_norm: torch.Tensor
    post_attn_norm: torch.Tensor


@dataclass
class Checkpoint:
    path: Path
    args: ModelArgs
    embed: torch.Tensor
    layers: list[LayerWeights]
    final_norm: torch.Tensor
    lm_head: Linear  # the embedding's weights when tied
    tokenizer: Any | None  # tokenizers.Tokenizer, or None when the checkpoint has no tokenizer.json


def read_model_args(path: str | Path) -> ModelArgs:
    """Parse config.json (and generation_config.json for EOS ids) with clear errors."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"model: {str(path)!r} is not a directory (expected an HF checkpoint dir)")
    cfg_path = root / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"model: {str(root)!r} has no config.json; is it a Hugging Face checkpoint?")
    cfg = json.loads(cfg_path.read_text())
    archs = cfg.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(
            f"model: unsupported architecture {archs or cfg.get('model_type')!r} in {cfg_path}; "
            f"the nano engine supports {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if cfg.get("hidden_act", "silu") != "silu":
        raise ValueError(f"model: unsupported hidden_act {cfg['hidden_act']!r} (only silu / SwiGLU)")
    if cfg.get("mlp_bias"):
        raise ValueError("model: mlp_bias=true is not supported by the nano engine")
    if arch == "MistralForCausalLM" and cfg.get("sliding_window") not in (None, 0):
        if cfg["sliding_window"] < cfg.get("max_position_embeddings", 0):
            raise ValueError("model: sliding-window attention is not supported by the nano engine")
    # transformers >= 5 writes rope_parameters (theta + scaling) instead of rope_theta / rope_scaling.
    rope_params = cfg.get("rope_parameters") or {}
    rope_theta = float(rope_params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
    scaling = cfg.get("rope_scaling") or {k: v for k, v in rope_params.items() if k != "rope_theta"}
    if scaling and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = None
    if scaling:
        kind = scaling.get("rope_type", scaling.get("type"))
        if kind not in ("default", "linear", "llama3"):
            raise ValueError(f"model: unsupported rope_scaling type {kind!r} (default, linear, llama3)")
    heads = int(cfg["num_attention_heads"])
    gen_path = root / "generation_config.json"
    gen = json.loads(gen_path.read_text()) if gen_path.is_file() else {}
    return ModelArgs(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=rope_theta,
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        # Qwen2 always has QKV bias (its config has no switch for it).
        attention_bias=arch == "Qwen2ForCausalLM" or bool(cfg.get("attention_bias", False)),
        architecture=arch,
        rope_scaling=tuple(sorted(scaling.items())) if scaling else None,
        eos_token_ids=merge_token_ids(cfg.get("eos_token_id"), gen.get("eos_token_id")),
        bos_token_id=cfg.get("bos_token_id"),
    )


def _read_safetensors(root: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = root / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = sorted(p.name for p in root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"model: no *.safetensors weights in {str(root)!r}")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(root / name)))
    return tensors


def _build(root: Path, args: ModelArgs, dtype: torch.dtype, device: torch.device, prepack: bool) -> Checkpoint:
    raw = _read_safetensors(root)

    def take(name: str, required: bool = True) -> torch.Tensor | None:
        t = raw.pop(name, None)
        if t is None:
            if required:
                raise ValueError(f"model: weight {name!r} is missing from the checkpoint in {str(root)!r}")
            return None
        return t.to(device=device, dtype=dtype)

    layers = []
    for i in range(args.num_layers):
        p = f"model.layers.{i}."
        q, k, v = (take(p + f"self_attn.{n}_proj.weight") for n in "qkv")
        bias = None
        if args.attention_bias:
            bias = torch.cat([take(p + f"self_attn.{n}_proj.bias") for n in "qkv"]).contiguous()
        layers.append(
            LayerWeights(
                qkv=Linear(torch.cat([q, k, v]).contiguous(), bias, prepack),
                o=Linear(
                    take(p + "self_attn.o_proj.weight").contiguous(),
                    take(p + "self_attn.o_proj.bias", required=False) if args.attention_bias else None,
                    prepack,
                ),
                gate_up=Linear(
                    torch.cat([take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")]).contiguous(),
                    None,
                    prepack,
                ),
                down=Linear(take(p + "mlp.down_proj.weight").contiguous(), None, prepack),
                input_norm=take(p + "input_layernorm.weight"),
                post_attn_norm=take(p + "post_attention_layernorm.weight"),
            )
        )
    embed = take("model.embed_tokens.weight").contiguous()
    lm_head = take("lm_head.weight", required=not args.tie_word_embeddings)
    if lm_head is None:
        lm_head = embed
    if embed.shape != (args.vocab_size, args.hidden_size):
        raise ValueError(f"model: embedding shape {tuple(embed.shape)} does not match config.json")
    return Checkpoint(
        path=root,
        args=args,
        embed=embed,
        layers=layers,
        final_norm=take("model.norm.weight"),
        lm_head=Linear(lm_head.contiguous(), None, prepack),
        tokenizer=load_tokenizer_file(root),
    )


# Engines of one process that load the same checkpoint share its (read-only) weights.
_cache: "weakref.WeakValueDictionary[tuple, Checkpoint]" = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()


def load_checkpoint(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", prepack: bool = True
) -> Checkpoint:
    """Load (or reuse, within this process) the checkpoint in ``path``; ``prepack`` reorders CPU weights
    for oneDNN (see :mod:`llumnix_dask.engine.nano.linear`)."""
    args = read_model_args(path)
    root = Path(path).expanduser().resolve()
    device = torch.device(device)
    stamp = max((p.stat().st_mtime_ns for p in root.glob("*.safetensors")), default=0)
    key = (str(root), stamp, dtype, str(device), prepack)
    with _cache_lock:
        ckpt = _cache.get(key)
        if ckpt is None:
            ckpt = _build(root, args, dtype, device, prepack)
            _cache[key] = ckpt
    return ckpt


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding (with linear / llama3 scaling when configured)."""
    d = args.head_dim
    inv = 1.0 / (args.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    if not args.rope_scaling:
        return inv
    s = dict(args.rope_scaling)
    kind = s.get("rope_type", s.get("type"))
    if kind == "linear":
        return inv / float(s["factor"])
    if kind == "llama3":
        factor, low, high = float(s["factor"]), float(s["low_freq_factor"]), float(s["high_freq_factor"])
        old_len = float(s["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        low_wl, high_wl = old_len / low, old_len / high
        scaled = torch.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_len / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
        return torch.where(is_mid, mid, scaled)
    return inv
