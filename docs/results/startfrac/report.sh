#!/bin/bash
# RESULTS 0o's tables from lane.sh's runs: --pretrain.start_fraction 0.25 (runs/startfrac) against the default on
# the same seeds (0l's runs/xg, 0n's runs/cheetah-xg) and the Gaussian ensemble (0l's matrix-fresh, runs/cheetah).
set -e
cd /work/main
PY=.venv/bin/python; O=docs/results/startfrac
HW="local/hopper/medium-v0 local/hopper/medium-replay-v0 local/walker2d/medium-v0 local/walker2d/medium-replay-v0"
CH="local/halfcheetah/medium-v0 local/halfcheetah/medium-replay-v0"
MINARI_DATASETS_PATH=/work/shared/datasets $PY -m uepo.sweep report --out runs/startfrac --datasets $HW --seeds 3 4 \
    --variants main --json $O/matrix-sf-hw.json --collect $O/per-run > $O/report-hw.md
export MINARI_DATASETS_PATH=/work/datasets-extra
$PY -m uepo.sweep report --out runs/startfrac --datasets $CH --seeds 0 1 --variants main \
    --json $O/matrix-sf-cheetah.json --collect $O/per-run > $O/report-cheetah.md
# HalfCheetah's default and Gaussian runs, now with medium-replay's seed 1 (made by lane.sh's base and gauss)
$PY -m uepo.sweep report --out runs/cheetah-xg --datasets $CH --seeds 0 1 --variants main \
    --json $O/matrix-cheetah-default.json --collect $O/per-run-default > $O/report-cheetah-default.md
$PY -m uepo.sweep report --out runs/cheetah --datasets $CH --seeds 0 1 --variants gaussian-ensemble \
    --json $O/matrix-cheetah-gaussian.json > /dev/null
# base: the Gaussian ensemble, then the default (it overrides matrix-fresh's ε "main" runs); new: start_fraction 0.25
$PY scripts/compare_matrices.py docs/results/matrix-fresh.json docs/results/xg/matrix-xg-fresh.json \
    $O/matrix-cheetah-gaussian.json $O/matrix-cheetah-default.json \
    --new $O/matrix-sf-hw.json $O/matrix-sf-cheetah.json --targets --json $O/compare.json > $O/compare.md
