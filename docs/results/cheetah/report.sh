#!/bin/bash
# RESULTS 0n's tables from the run directories of lane.sh.
set -e
cd /work/main
export MINARI_DATASETS_PATH=/work/datasets-extra
PY=.venv/bin/python
SEEDS=${SEEDS:-"0 1"}
TWO="local/halfcheetah/medium-v0 local/halfcheetah/medium-replay-v0"
O=docs/results/cheetah
$PY -m uepo.sweep report --out runs/cheetah --datasets $TWO --seeds $SEEDS --variants main gaussian-ensemble \
    --json $O/matrix-eps.json --collect $O/per-run > $O/report-eps.md
$PY -m uepo.sweep report --out runs/cheetah-xg --datasets $TWO --seeds $SEEDS --variants main \
    --json $O/matrix-xg.json --collect $O/per-run-xg > $O/report-xg.md
$PY scripts/compare_matrices.py $O/matrix-eps.json --new $O/matrix-xg.json --targets \
    --json $O/compare.json > $O/compare.md
