#!/bin/bash
# RESULTS 0m's tables: the 12 fresh runs (seeds 5-6), then x0 + gate's out-of-sample picture (every run
# registered before it started: 0l's seeds 0-4 on hopper medium / walker2d medium-replay, 3-4 on the other
# two, and this stop's 5-6) against eps and Gaussian on the same seeds.
set -e
cd /work/main
PY=.venv/bin/python
TWO="local/walker2d/medium-v0 local/hopper/medium-replay-v0"
ALL="local/hopper/medium-v0 local/hopper/medium-replay-v0 local/walker2d/medium-v0 local/walker2d/medium-replay-v0"
O=docs/results/xg
$PY -m uepo.sweep report --out runs/m56 --datasets $TWO --seeds 5 6 --variants main gaussian-ensemble \
    --json $O/matrix-m56.json --collect $O/per-run-m56 > $O/report-m56.md
$PY -m uepo.sweep report --out runs/xg56 --datasets $TWO --seeds 5 6 --variants main \
    --json $O/matrix-xg56.json --collect $O/per-run > $O/report-xg56.md
$PY scripts/compare_matrices.py $O/matrix-m56.json --new $O/matrix-xg56.json --targets \
    --json $O/compare-56.json > $O/compare-56.md
# the out-of-sample tree: links only
for D in $ALL; do
  mkdir -p runs/xgoos/$D
  for S in 0 1 2 3 4 5 6; do
    for SRC in runs/xg/$D/main-s$S runs/xg56/$D/main-s$S; do
      [ -f $SRC/summary.json ] && ln -sfn $(realpath $SRC) runs/xgoos/$D/main-s$S
    done
  done
done
$PY -m uepo.sweep report --out runs/xgoos --datasets $ALL --seeds 0 1 2 3 4 5 6 --variants main \
    --json $O/matrix-xg-oos.json > $O/report-oos.md
$PY scripts/compare_matrices.py docs/results/matrix-400.json docs/results/matrix-fresh.json $O/matrix-m56.json \
    --new $O/matrix-xg-oos.json --targets --json $O/compare-oos.json > $O/compare-oos.md
