"""Gather / scatter of KV blocks: torch everywhere, Triton interpreted on CPU, Triton compiled on a GPU."""

import os

import pytest
import torch

from llumnix_dask.engine import kv_copy as kernels
from llumnix_dask.engine.kv_copy import gather_blocks, scatter_blocks


def _cache(device="cpu", dtype=torch.float32):
    # [layers, K/V, blocks, block_size, heads, head_dim] like the nano engine, with distinct values.
    return torch.randn(3, 2, 10, 4, 2, 5, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def _roundtrip(backend, device="cpu", dtype=torch.float32):
    cache = _cache(device, dtype)
    ids = [7, 2, 9]
    buf = gather_blocks(cache, ids, block_dim=2, backend=backend)
    assert buf.is_contiguous() and buf.shape == (3, 2, 3, 4, 2, 5)
    assert torch.equal(buf, cache[:, :, ids])
    other = torch.zeros_like(cache)
    scatter_blocks(other, [0, 5, 1], buf, block_dim=2, backend=backend)
    assert torch.equal(other[:, :, [0, 5, 1]], cache[:, :, ids])
    untouched = [i for i in range(10) if i not in (0, 5, 1)]
    assert torch.count_nonzero(other[:, :, untouched]) == 0


def test_torch_backend_roundtrip_moves_exactly_the_named_blocks():
    _roundtrip("torch")


def test_gather_rejects_out_of_range_ids_and_bad_backend():
    with pytest.raises(IndexError, match="block_ids"):
        gather_blocks(_cache(), [10], block_dim=2)
    with pytest.raises(ValueError, match="backend"):
        gather_blocks(_cache(), [1], block_dim=2, backend="cuda-magic")


def test_scatter_rejects_a_buffer_of_the_wrong_size():
    with pytest.raises(ValueError, match="buffer"):
        scatter_blocks(_cache(), [1, 2], torch.zeros(3, 2, 1, 4, 2, 5), block_dim=2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_kernels_in_interpreter_mode_match_torch(monkeypatch, dtype):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.triton_available()
    _roundtrip("triton", dtype=dtype)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_kernels_on_gpu_match_torch(dtype):
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set; this test is for the compiled kernel")
    _roundtrip("triton", device="cuda", dtype=dtype)
    _roundtrip("auto", device="cuda", dtype=dtype)
