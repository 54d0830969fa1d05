#!/bin/bash
# RESULTS 0m's lanes. usage: lane56.sh "D S" "D S" ...  (run from /work/exp, a worktree of dd14506)
# Per dataset-seed: eps -> x0 + gate -> Gaussian (docs/results/lanes.sh's trio).
export MINARI_DATASETS_PATH=/work/shared/datasets OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
cd /work/exp
PY=/work/main/.venv/bin/python
M=/work/main/runs/m56; X=/work/main/runs/xg56; LANES_LOG=$M/lanes.log
source /work/main/docs/results/lanes.sh
for job in "$@"; do trio $job; done
