#!/bin/bash
# RESULTS 0n's lanes. usage: lane.sh "D S" "D S" ...  (run from /work/exp, a worktree of the registration commit)
# Per dataset-seed: eps (today's defaults) -> x0 + gate (critics and T0 reused from the eps run) -> Gaussian.
# The HalfCheetah data: scripts/make_locomotion_dataset.py --env HalfCheetah-v5 --out /work/datasets-extra
export MINARI_DATASETS_PATH=/work/datasets-extra OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
cd /work/exp
PY=/work/main/.venv/bin/python
M=/work/main/runs/cheetah; X=/work/main/runs/cheetah-xg
one() {  # run_dir log flags...
  local RD=$1 LOG=$2; shift 2
  [ -f $RD/summary.json ] && return
  mkdir -p $(dirname $RD)
  if [ -f $RD/config.yaml ]; then $PY -m uepo.train --run_dir $RD --resume > $LOG 2>&1
  else $PY -m uepo.train --run_dir $RD "$@" > $LOG 2>&1; fi
  echo "$RD rc=$? $(date)" >> $M/lanes.log
}
for job in "$@"; do
  set -- $job; D=$1; S=$2
  COMMON="--dataset $D --preset bench --seed $S --threads 1 --phases offline"
  one $M/$D/main-s$S $M/$D/main-s$S.log $COMMON
  one $X/$D/main-s$S $X/$D/main-s$S.log $COMMON --pretrain.prediction x0 --improve.accept_z 1.645 \
      --reuse_from $M/$D/main-s$S
  one $M/$D/gaussian-ensemble-s$S $M/$D/gaussian-ensemble-s$S.log $COMMON --policy gaussian-ensemble \
      --reuse_from $M/$D/main-s$S
done
