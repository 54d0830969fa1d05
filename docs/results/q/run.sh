#!/bin/bash
# RESULTS 0q's runs, one per call: run.sh NAME D S FLAGS... (from /work/exp, a worktree of the registration commit)
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
case $2 in local/halfcheetah/*) export MINARI_DATASETS_PATH=/work/datasets-extra ;;
           *) export MINARI_DATASETS_PATH=/work/shared/datasets ;; esac
cd /work/exp
NAME=$1 D=$2 S=$3; shift 3
RD=/work/main/runs/q/$NAME/$D/main-s$S; mkdir -p $(dirname $RD)
/work/main/.venv/bin/python -m uepo.train --run_dir $RD --dataset $D --preset bench --seed $S --threads 1 \
    --phases offline "$@" > $RD.log 2>&1
echo "$RD rc=$? $(date)" >> /work/main/runs/q/lanes.log
