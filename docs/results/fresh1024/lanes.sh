#!/bin/bash
# RESULTS 0s: scripts/reselect.py --states 1024 (and 256) on every finished run with checkpoints, two lanes:
#   bash docs/results/fresh1024/lanes.sh 1 & bash docs/results/fresh1024/lanes.sh 2 &
# lane 1 takes the odd-numbered runs of runs.txt, lane 2 the even; a run with its JSON is skipped (resumable).
cd "$(dirname "$0")/../../.." || exit 1
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONPATH=$PWD  # this checkout's uepo, not the venv's
OUT=${FRESH_OUT:-docs/results/fresh1024}  # runs.txt, json/, logs/ (absolute run paths)
for k in 1024 256; do  # every run at 1024 first: 256 is for information and comes if time allows
  i=0
  while read -r r; do
    i=$((i + 1)); [ $((i % 2)) -eq $(($1 % 2)) ] || continue
    case $r in *halfcheetah*) export MINARI_DATASETS_PATH=/work/datasets-extra ;;
               *) export MINARI_DATASETS_PATH=/work/shared/datasets ;; esac
    tag=$(echo "$r" | cut -d/ -f2- | tr '/' '_')
    [ -s $OUT/json/k$k-$tag.json ] && continue
    /work/main/.venv/bin/python scripts/reselect.py "$r" --states $k --json $OUT/json/k$k-$tag.json > $OUT/logs/k$k-$tag.log 2>&1
  done < $OUT/runs.txt
done
