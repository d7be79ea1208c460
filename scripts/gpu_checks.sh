#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (CI never has a GPU; run this on a GPU box by hand):
#   1. what the box has (GPU, torch, cupy, triton);
#   2. the engine and migration test suites with the engines on CUDA (device "auto" picks the GPU), the
#      gpu-marked tests (compiled Triton block kernels, a GPU Cluster with migration) and the Cluster e2e
#      tests; the 2-GPU NCCL test skips itself on a 1-GPU box;
#   3. the engine throughput benchmark on CUDA (nano vs transformers) and migration downtime with GPU engines.
# Results go to $OUT (default gpu-out/). Usage: bash scripts/gpu_checks.sh [--no-bench]
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

nvidia-smi -L || { echo "no NVIDIA GPU visible"; exit 1; }
python3 - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "gpus", torch.cuda.device_count(), torch.cuda.get_device_name(0))
for name in ("cupy", "triton", "distributed", "transformers"):
    try:
        print(name, __import__(name).__version__)
    except Exception as exc:
        print(name, "missing:", exc)
EOF

workers=$(( $(nproc) / 2 )); [ "$workers" -gt 6 ] && workers=6
xdist=(); python3 -c "import xdist" 2>/dev/null && xdist=(-n "$workers" --dist loadfile)
timeout 240 python3 -m pytest -q -p no:cacheprovider "${xdist[@]}" -m "not vllm" \
    tests/engine tests/migration tests/e2e/test_gpu_e2e.py tests/e2e/test_cluster_e2e.py \
    --junitxml "$OUT/pytest_gpu.xml" 2>&1 | tee "$OUT/pytest_gpu.log" | tail -40

[ "${1:-}" = "--no-bench" ] && exit 0
timeout 100 python3 benchmarks/engine_throughput.py --device cuda --batches 1 8 32 128 --repeats 2 \
    --output "$OUT/engine_throughput_cuda.json" 2>&1 | grep -v "it/s\]" | tail -12
timeout 150 python3 benchmarks/migration_downtime.py --lengths 256 1024 4096 --repeats 1 2>&1 \
    | grep -v "it/s\]" | tail -14
cp benchmarks/results/migration_downtime.json "$OUT/migration_downtime_cuda.json" 2>/dev/null || true
