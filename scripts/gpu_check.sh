#!/usr/bin/env bash
# One prepared run for a lent GPU machine (see the device tool's README): build uepo against
# the machine's torch, check the CUDA kernels, run the CUDA tests, time the fused ops.
# Usage there: bash scripts/gpu_check.sh   (writes logs and JSON under $OUT when set)
set -uo pipefail
out="${OUT:-/tmp/uepo-gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="9.0" UEPO_CUDA=1
# In place, against the machine's own torch: the repo's uepo/ then holds the library.
python3 setup.py build_ext --inplace > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
python3 -m uepo.cuda_check 2>&1 | tee "$out/cuda_check.log"
python3 -m pytest -q -p no:cacheprovider --noconftest tests/test_ops.py 2>&1 | tee "$out/test_ops.log" | tail -5
python3 -m benchmarks.gpu --out "$out/gpu_latest.json" 2>&1 | tee "$out/gpu_bench.log"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
