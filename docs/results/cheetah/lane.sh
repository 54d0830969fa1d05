#!/bin/bash
# RESULTS 0n's lanes. usage: lane.sh "D S" "D S" ...  (run from /work/exp, a worktree of the registration commit)
# Per dataset-seed: eps -> x0 + gate -> Gaussian (docs/results/lanes.sh's trio).
# The HalfCheetah data: scripts/make_locomotion_dataset.py --env HalfCheetah-v5 --out /work/datasets-extra
export MINARI_DATASETS_PATH=/work/datasets-extra OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
cd /work/exp
PY=/work/main/.venv/bin/python
M=/work/main/runs/cheetah; X=/work/main/runs/cheetah-xg; LANES_LOG=$M/lanes.log
source /work/main/docs/results/lanes.sh
for job in "$@"; do trio $job; done
