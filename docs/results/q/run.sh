#!/bin/bash
# RESULTS 0q's runs, one per call: run.sh NAME D S FLAGS... (from /work/exp, a worktree of the registration commit).
# docs/results/lanes.sh's one(): a finished run is skipped, a started one resumed.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
case $2 in local/halfcheetah/*) export MINARI_DATASETS_PATH=/work/datasets-extra ;;
           *) export MINARI_DATASETS_PATH=/work/shared/datasets ;; esac
cd /work/exp
PY=/work/main/.venv/bin/python; LANES_LOG=/work/main/runs/q/lanes.log
source /work/main/docs/results/lanes.sh
NAME=$1 D=$2 S=$3; shift 3
RD=/work/main/runs/q/$NAME/$D/main-s$S
one $RD $RD.log --dataset $D --preset bench --seed $S --threads 1 --phases offline "$@"
