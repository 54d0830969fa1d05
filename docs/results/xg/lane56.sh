#!/bin/bash
# RESULTS 0m's lanes. usage: lane56.sh "D S" "D S" ...  (run from /work/exp, a worktree of dd14506)
# Per dataset-seed: eps (today's defaults) -> x0 + gate (critics and T0 reused from the eps run) -> Gaussian.
export MINARI_DATASETS_PATH=/work/shared/datasets OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
cd /work/exp
PY=/work/main/.venv/bin/python
M=/work/main/runs/m56; X=/work/main/runs/xg56
one() {  # run_dir log flags...
  local RD=$1 LOG=$2; shift 2
  [ -f $RD/summary.json ] && return
  if [ -f $RD/config.yaml ]; then $PY -m uepo.train --run_dir $RD --resume > $LOG 2>&1
  else $PY -m uepo.train --run_dir $RD "$@" > $LOG 2>&1; fi
  echo "$RD rc=$? $(date)" >> /work/main/runs/m56/lanes.log
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
