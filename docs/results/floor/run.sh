#!/bin/bash
# RESULTS 0r's runs, one per call (from /work/exp, a worktree of the registration commit):
#   run.sh floor D S [REUSE]  the default + the start floor, the start rows' executed action weighted 8; phase A
#                             and T̂0 reused from REUSE where given (their A and T̂0 are the default's, bit for bit)
#   run.sh base D S           the default (a seed without a committed default run)
#   run.sh gauss D S REUSE    the Gaussian ensemble beside it, phase A reused
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
case $2 in local/halfcheetah/*) export MINARI_DATASETS_PATH=/work/datasets-extra ;;
           *) export MINARI_DATASETS_PATH=/work/shared/datasets ;; esac
cd /work/exp
PY=/work/main/.venv/bin/python; LANES_LOG=/work/main/runs/floor/lanes.log
source /work/main/docs/results/lanes.sh
KIND=$1 D=$2 S=$3 REUSE=$4 O=/work/main/runs/floor
COMMON="--dataset $D --preset bench --seed $S --threads 1 --phases offline ${REUSE:+--reuse_from $REUSE}"
case $KIND in
  floor) one $O/floor/$D/main-s$S $O/floor/$D/main-s$S.log $COMMON \
             --pretrain.start_floor 0.1 --pretrain.start_action_weight 8 ;;
  base) one $O/base/$D/main-s$S $O/base/$D/main-s$S.log $COMMON ;;
  gauss) one $O/base/$D/gaussian-ensemble-s$S $O/base/$D/gaussian-ensemble-s$S.log $COMMON --policy gaussian-ensemble ;;
esac
