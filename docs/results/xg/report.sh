#!/bin/bash
# RESULTS 0l's tables: the eight fresh runs (s3-4), then the 5-seed picture (s0-2 from this stop's
# batch 2 on hopper medium / walker2d medium-replay and 0k's x0az runs on walker2d medium / hopper medium-replay).
set -e
cd /work/main
PY=.venv/bin/python
DS="local/hopper/medium-v0 local/hopper/medium-replay-v0 local/walker2d/medium-v0 local/walker2d/medium-replay-v0"
mkdir -p docs/results/xg
$PY -m uepo.sweep report --out runs/xg --datasets $DS --seeds 3 4 --variants main \
    --json docs/results/xg/matrix-xg-fresh.json --collect docs/results/xg/per-run \
    --csv docs/results/xg/matrix-xg-fresh.csv --plot docs/results/xg/matrix-xg-fresh.png > docs/results/xg/report-fresh.md
$PY scripts/compare_matrices.py docs/results/matrix-fresh.json --new docs/results/xg/matrix-xg-fresh.json --targets \
    --json docs/results/xg/compare-fresh.json > docs/results/xg/compare-fresh.md
# the 5-seed tree: links only
for D in $DS; do
  mkdir -p runs/xg5/$D
  for S in 0 1 2 3 4; do
    for SRC in runs/xg/$D/main-s$S runs/x0az/$D/accept-z-s$S; do
      [ -f $SRC/summary.json ] && ln -sfn $(realpath $SRC) runs/xg5/$D/main-s$S
    done
  done
done
$PY -m uepo.sweep report --out runs/xg5 --datasets $DS --seeds 0 1 2 3 4 --variants main \
    --json docs/results/xg/matrix-xg-5seed.json --csv docs/results/xg/matrix-xg-5seed.csv \
    --plot docs/results/xg/matrix-xg-5seed.png > docs/results/xg/report-5seed.md
$PY scripts/compare_matrices.py docs/results/matrix-400.json docs/results/matrix-fresh.json \
    --new docs/results/xg/matrix-xg-5seed.json --targets --json docs/results/xg/compare-5seed.json > docs/results/xg/compare-5seed.md
