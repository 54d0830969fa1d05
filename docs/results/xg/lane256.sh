#!/bin/bash
# RESULTS 0m's probe (post hoc, on the seeds 5-6 runs): x0 + gate with AM-Q on 256 start states (bench: 64),
# phase D rerun on each x0 + gate run's phases A-C. usage: lane256.sh "D S" ...  (run from /work/exp)
export MINARI_DATASETS_PATH=/work/shared/datasets OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
cd /work/exp
for job in "$@"; do
  set -- $job; D=$1; S=$2
  RD=/work/main/runs/xg256/$D/main-s$S
  [ -f $RD/summary.json ] && grep -q '"selected"' $RD/summary.json && continue
  mkdir -p $(dirname $RD)
  if [ -f $RD/config.yaml ]; then R="--resume"; else R="--reuse_from /work/main/runs/xg56/$D/main-s$S"; fi
  /work/main/.venv/bin/python -m uepo.train --dataset $D --preset bench --seed $S --threads 1 --phases offline \
      --pretrain.prediction x0 --improve.accept_z 1.645 --improve.ope_states 256 --run_dir $RD $R > $RD.log 2>&1
  echo "$RD rc=$? $(date)" >> /work/main/runs/xg56/lanes256.log
done
