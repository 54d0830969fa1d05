#!/bin/bash
# RESULTS 0r's tables from lanes.sh's runs: the start floor (runs/floor/floor) against the default on the same
# seeds (committed: 0l/0m's x̂₀ + gate runs, HalfCheetah's 0p default runs; HalfCheetah medium-replay seed 3
# made here in runs/floor/base) and the Gaussian ensemble (committed matrices; seed 3 made here).
set -e
cd /work/main
PY=.venv/bin/python; O=docs/results/floor; R=runs/floor
export MINARI_DATASETS_PATH=/work/shared/datasets
$PY -m uepo.sweep report --out $R/floor --datasets local/hopper/medium-v0 local/walker2d/medium-v0 --seeds 0 1 3 5 6 \
    --variants main --json $O/matrix-floor-hw.json --collect $O/per-run > $O/report-hw.md
export MINARI_DATASETS_PATH=/work/datasets-extra
$PY -m uepo.sweep report --out $R/floor --datasets local/halfcheetah/medium-v0 local/halfcheetah/medium-replay-v0 \
    --seeds 0 1 2 3 --variants main --json $O/matrix-floor-cheetah.json --collect $O/per-run > $O/report-cheetah.md
$PY -m uepo.sweep report --out $R/base --datasets local/halfcheetah/medium-replay-v0 --seeds 3 \
    --variants main gaussian-ensemble --json $O/matrix-base-cheetah.json --collect $O/per-run-base > $O/report-base.md
# base: Gaussian ensembles, then the default's main runs (later files override earlier ε "main" runs)
P=docs/results/pair; X=docs/results/xg
$PY scripts/compare_matrices.py docs/results/matrix-400.json docs/results/matrix-fresh.json $X/matrix-m56.json \
    $X/matrix-xg-5seed.json $X/matrix-xg-fresh.json $X/matrix-xg56.json \
    $P/matrix-cheetah-gaussian.json $P/matrix-cheetah-default.json $O/matrix-base-cheetah.json \
    --new $O/matrix-floor-hw.json $O/matrix-floor-cheetah.json --targets --json $O/compare.json > $O/compare.md
