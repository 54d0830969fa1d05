#!/bin/bash
# usage: lane.sh DATASET:SEED ...  — rescreen the m400 main run, then resume it (phases C, D, evaluation)
cd /work/main
export MINARI_DATASETS_PATH=/work/shared/datasets OMP_NUM_THREADS=1
for item in "$@"; do
  D=${item%%:*}; S=${item##*:}
  SRC=runs/m400/$D/main-s$S; DST=runs/screen/$D/main-s$S
  [ -f $DST/summary.json ] && grep -q '"selected"' $DST/summary.json && continue
  [ -d $DST ] || .venv/bin/python scripts/rescreen.py $SRC $DST --candidates 16
  .venv/bin/python -m uepo.train --resume $DST > $DST.log 2>&1
  echo "$(date +%T) done $D s$S"
done
