#!/bin/bash
# usage: lane.sh "D S" "D S" ...   (run from /work/exp; run dirs under /work/main/runs/xg)
export MINARI_DATASETS_PATH=/work/shared/datasets
cd /work/exp
for job in "$@"; do
  set -- $job
  D=$1; S=$2
  RD=/work/main/runs/xg/$D/main-s$S
  if [ -f $RD/summary.json ]; then continue; fi
  R=""; [ -d $RD ] && R="--resume"
  /work/main/.venv/bin/python -m uepo.train --dataset $D --preset bench --seed $S --threads 1 --phases offline \
      --pretrain.prediction x0 --improve.accept_z 1.645 --run_dir $RD $R > /work/main/runs/xg/$(echo $D | tr / _)-s$S.log 2>&1
  echo "$D s$S rc=$? $(date)" >> /work/main/runs/xg/lanes.log
done
