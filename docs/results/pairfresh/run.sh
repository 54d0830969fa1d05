#!/bin/bash
# RESULTS 0t's runs, one per call (from /work/exp, a worktree of the registration commit):
#   run.sh base D S   the default, also selecting on 1024 fresh start states: its summary.json holds both picks
#                     (selection.validation.gate: the gate's Ĵ, the default's pick; selection: the fresh pick)
#   run.sh pair D S   + the start floor (0r) with 1024 fresh states; phase A and T̂0 reused from the seed's base run
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1 PYTHONPATH=/work/exp
case $2 in local/halfcheetah/*) export MINARI_DATASETS_PATH=/work/datasets-extra ;;
           *) export MINARI_DATASETS_PATH=/work/shared/datasets ;; esac
cd /work/exp || exit 1
PY=/work/main/.venv/bin/python; LANES_LOG=/work/main/runs/pf/lanes.log
source /work/main/docs/results/lanes.sh
KIND=$1 D=$2 S=$3 O=/work/main/runs/pf
COMMON="--dataset $D --preset bench --seed $S --threads 1 --phases offline --improve.validate_states 1024"
case $KIND in
  base) one $O/base/$D/main-s$S $O/base/$D/main-s$S.log $COMMON ;;
  pair) one $O/pair/$D/main-s$S $O/pair/$D/main-s$S.log $COMMON --reuse_from $O/base/$D/main-s$S \
            --pretrain.start_floor 0.1 --pretrain.start_action_weight 8 ;;
esac
