#!/bin/bash
# RESULTS 0q's per-run summaries and configs, and a table per probe (runs made by docs/results/q/run.sh).
set -e
cd /work/main
PY=.venv/bin/python; O=docs/results/q
report() {  # NAME DATASETS_PATH DATASET SEEDS...
  local NAME=$1 DP=$2 D=$3; shift 3
  [ -d runs/q/$NAME/$D ] || return 0
  MINARI_DATASETS_PATH=$DP $PY -m uepo.sweep report --out runs/q/$NAME --datasets $D --seeds "$@" --variants main \
      --json $O/matrix-$NAME-$(basename $(dirname $D)).json --collect $O/per-run-$NAME > $O/report-$NAME-$(basename $(dirname $D)).md
}
report faw8 /work/shared/datasets local/walker2d/medium-replay-v0 3 4
report mild /work/shared/datasets local/walker2d/medium-replay-v0 0 1 2 3 4
report mild /work/shared/datasets local/hopper/medium-replay-v0 3
report mild /work/datasets-extra local/halfcheetah/medium-replay-v0 1 2
