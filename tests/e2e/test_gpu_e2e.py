"""The Python API on a real LocalCluster whose nano engines run on CUDA (skipped without a GPU).

Two instances share the machine's GPUs (one GPU: both on it). What a user on a GPU box notices: the
instances say they are on CUDA, text comes out, and a request migrated mid-stream between two GPU
instances (KV blocks staged through host memory over Dask comm) yields every token of an unmigrated run.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from llumnix_dask import Cluster, EngineConfig, PolicyConfig  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.e2e,
    pytest.mark.timeout(300),
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def gpu_cluster():
    engine = EngineConfig(device="cuda", num_blocks=256, max_batch_size=16)
    with Cluster(2, engine=engine, policy=PolicyConfig(migration_enabled=False), dashboard_address=None) as c:
        yield c


def test_instances_run_on_cuda_and_generate(gpu_cluster):
    df = gpu_cluster.instances()
    assert len(df) == 2
    assert all(str(d).startswith("cuda") for d in df["device"]), df["device"].tolist()
    done = gpu_cluster.generate(PROMPT, max_tokens=16, ignore_eos=True, details=True)
    assert len(done.token_ids) == 16 and done.finish_reason == "length"
    assert "".join(gpu_cluster.stream(PROMPT, max_tokens=16, ignore_eos=True)) == done.text


@pytest.mark.parametrize("seed", [None, 7], ids=["greedy", "seeded"])
def test_migration_between_gpu_instances_keeps_every_token(gpu_cluster, seed):
    sampling = {"max_tokens": 160, "ignore_eos": True}
    if seed is not None:
        sampling.update(temperature=0.9, seed=seed)
    reference = gpu_cluster.generate(PROMPT, details=True, **sampling)
    chunks, result = [], None
    for chunk in gpu_cluster.stream(PROMPT, details=True, **sampling):
        chunks.append(chunk)
        if len(chunks) == 8:
            result = gpu_cluster.migrate(chunk.request_id)
    assert result is not None and result["ok"], result
    assert [t for c in chunks for t in c.token_ids] == reference.token_ids
    assert len({c.instance_id for c in chunks}) == 2
