#!/bin/bash
# RESULTS 0p's tables from lane.sh's runs: start_fraction 0.25 + first_action_weight 8 (runs/pair) against the
# default on the same seeds (0l's runs/xg; HalfCheetah's runs/cheetah-xg, seed 2 made by lane.sh) and the
# Gaussian ensemble (0l's matrix-fresh; HalfCheetah's runs/cheetah).
set -e
cd /work/main
PY=.venv/bin/python; O=docs/results/pair
HW="local/hopper/medium-v0 local/hopper/medium-replay-v0 local/walker2d/medium-v0 local/walker2d/medium-replay-v0"
CH="local/halfcheetah/medium-v0 local/halfcheetah/medium-replay-v0"
MINARI_DATASETS_PATH=/work/shared/datasets $PY -m uepo.sweep report --out runs/pair --datasets $HW --seeds 3 4 \
    --variants main --json $O/matrix-pair-hw.json --collect $O/per-run > $O/report-hw.md
export MINARI_DATASETS_PATH=/work/datasets-extra
$PY -m uepo.sweep report --out runs/pair --datasets $CH --seeds 2 --variants main \
    --json $O/matrix-pair-cheetah.json --collect $O/per-run > $O/report-cheetah.md
# HalfCheetah's default and Gaussian runs, seeds 0-2 (seed 2 made by lane.sh's base and gauss)
$PY -m uepo.sweep report --out runs/cheetah-xg --datasets $CH --seeds 0 1 2 --variants main \
    --json $O/matrix-cheetah-default.json --collect $O/per-run-default > $O/report-cheetah-default.md
$PY -m uepo.sweep report --out runs/cheetah --datasets $CH --seeds 0 1 2 --variants gaussian-ensemble \
    --json $O/matrix-cheetah-gaussian.json --collect $O/per-run-gaussian > $O/report-cheetah-gaussian.md
# base: the Gaussian ensemble, then the default (it overrides matrix-fresh's ε "main" runs); new: the pair
$PY scripts/compare_matrices.py docs/results/matrix-fresh.json docs/results/xg/matrix-xg-fresh.json \
    $O/matrix-cheetah-gaussian.json $O/matrix-cheetah-default.json \
    --new $O/matrix-pair-hw.json $O/matrix-pair-cheetah.json --targets --json $O/compare.json > $O/compare.md
