"""Linear layers, with oneDNN weight prepacking on CPU.

A decode step multiplies a few rows of activations by every weight matrix. Plain ``F.linear`` repacks
the weight on each call, which for skinny inputs costs about as much as the product itself; a weight
reordered once into oneDNN's blocked layout runs 1.3-2.8x faster on this project's CPU boxes
(benchmarks/engine_throughput.py). Where the oneDNN ops are missing or fail (other builds, GPU, fp16)
the plain path is used.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

# Batch size the packed layout is tuned for; any batch size works.
_PACK_BATCH_HINT = 64


@functools.lru_cache(maxsize=None)
def prepacking_works(dtype: torch.dtype) -> bool:
    """Whether oneDNN prepacked linear runs (and agrees with F.linear) for this dtype on CPU."""
    try:
        w, x, b = torch.randn(24, 16).to(dtype), torch.randn(3, 16).to(dtype), torch.randn(24).to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(w, _PACK_BATCH_HINT)
        y = torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
        return bool(torch.allclose(y.float(), F.linear(x, w, b).float(), atol=1e-2, rtol=1e-2))
    except Exception:
        return False


class Linear:
    """``y = x @ weight.T + bias`` with the weight prepacked when that is possible."""

    __slots__ = ("weight", "bias", "packed", "out_features")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, prepack: bool = True) -> None:
        self.out_features = weight.shape[0]
        self.bias = bias
        self.packed = None
        self.weight: torch.Tensor | None = weight
        if prepack and weight.device.type == "cpu" and prepacking_works(weight.dtype):
            with torch.inference_mode():
                self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), _PACK_BATCH_HINT)
            self.weight = None  # the packed copy replaces it (no doubled memory)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)
