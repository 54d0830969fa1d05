#!/usr/bin/env bash
# One prepared run for a lent GPU machine (the device tool's README), in under 8 minutes on one H200:
# build uepo against the machine's torch, check the CUDA kernels, run the CUDA tests, time the fused ops
# (fused vs eager vs CUDA-graph eager), train `smoke` and a short `bench` on --device cuda, and time every
# phase's step at `paper` sizes to project the whole preset. Everything lands under $OUT.
#
#   here, once:  bash scripts/gpu_wheels.sh          # the simulators' wheels, into .whl/ (git-ignored)
#   device run:  carry [".whl"], command "bash scripts/gpu_check.sh", timeout_s 540
set -uo pipefail
out="${OUT:-/tmp/uepo-gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=16 TORCH_CUDA_ARCH_LIST="9.0" UEPO_CUDA=1 MUJOCO_GL=egl HF_HUB_OFFLINE=1
step() { echo "== $(date +%T) $*" | tee -a "$out/steps.log"; }

if ls .whl/*.whl > /dev/null 2>&1; then
    step "install the carried wheels"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl > "$out/wheels.log" 2>&1 && export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONPATH="${PYTHONPATH:-$PWD}"

step "build (in place, against $(python3 -c 'import torch; print(torch.__version__)'))"
timeout 300 python3 setup.py build_ext --inplace > "$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
step "cuda_check"
timeout 60 python3 -m uepo.cuda_check 2>&1 | tee "$out/cuda_check.log" | tail -3
step "CUDA op tests and the device-parametrised phase tests"
timeout 120 python3 -m pytest -q -p no:cacheprovider --noconftest tests/test_ops.py 2>&1 | tee "$out/test_ops.log" | tail -3
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_devices.py 2>&1 | tee "$out/test_devices.log" | tail -3
step "fused ops: fused vs eager vs CUDA-graph eager"
timeout 90 python3 -m benchmarks.gpu --out "$out/gpu_latest.json" 2>&1 | tee "$out/gpu_bench.log"
step "smoke run on cuda (phases A–E, evaluation)"
timeout 90 python3 -m uepo.train --preset smoke --device cuda --run_dir "$out/runs/smoke" \
    > "$out/smoke.log" 2>&1; echo "exit $?" | tee -a "$out/smoke.log"
step "short bench run on cuda (bench preset at 1/10 of its steps, offline)"
timeout 150 python3 -m uepo.train --preset bench --device cuda --phases offline --run_dir "$out/runs/bench" \
    --critics.steps 2500 --pretrain.steps 1000 --dynamics.max_epochs 4 --improve.steps 400 \
    --improve.ope_every 200 --improve.eval_episodes 2 > "$out/bench.log" 2>&1
echo "exit $?" | tee -a "$out/bench.log"
python3 - "$out" <<'EOF' 2>&1 | tee "$out/runs_summary.txt"
import json, sys, pathlib
for name in ("smoke", "bench"):
    p = pathlib.Path(sys.argv[1]) / "runs" / name / "summary.json"
    s = json.loads(p.read_text()) if p.exists() else {}
    print(name, "timings_s", s.get("timings_s"), "selected", s.get("scores", {}).get("selected"),
          "backend", s.get("provenance", {}).get("kernel_backend"))
EOF
step "per-step time of every phase at paper sizes, and the paper preset projected"
timeout 120 python3 -m benchmarks.phase_timing --device cuda --preset paper --steps 20 \
    --out "$out/phase_timing.json" 2>&1 | tee "$out/phase_timing.log"
step "the same steps of A–D with --amp bf16, then with --compile true (the config fields, measured)"
timeout 60 python3 -m benchmarks.phase_timing --device cuda --preset paper --steps 10 --no-online --amp bf16 \
    --out "$out/phase_timing_bf16.json" 2>&1 | tee "$out/phase_timing_bf16.log"
timeout 150 python3 -m benchmarks.phase_timing --device cuda --preset paper --steps 10 --no-online --compile \
    --out "$out/phase_timing_compile.json" 2>&1 | tee "$out/phase_timing_compile.log"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv | tee "$out/gpu.txt"
step "done"
