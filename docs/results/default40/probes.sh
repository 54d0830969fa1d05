#!/bin/bash
# RESULTS 0u's two probes (after the runs), two lanes: bash probes.sh 1 & bash probes.sh 2 &
#   lane 1: the fresh pick on T̂0 (scripts/reselect.py --t0_views), walker2d medium, medium-replay, then hopper
#   lane 2: the imitation-error probe on the same runs, in the same order
# Started when 0u's lanes end; what has not finished by 06:40 UTC is reported as not run.
cd /work/exp || exit 1
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONPATH=/work/exp MINARI_DATASETS_PATH=/work/shared/datasets
PY=/work/main/.venv/bin/python; R=/work/main/runs; O=/work/main/docs/results/default40/probes
mkdir -p $O
WM="$R/floor/floor/local/walker2d/medium-v0/main-s3 $R/floor/floor/local/walker2d/medium-v0/main-s5
  $R/floor/floor/local/walker2d/medium-v0/main-s6 $R/pf/pair/local/walker2d/medium-v0/main-s7
  $R/pf/pair/local/walker2d/medium-v0/main-s8"
WMR="$R/d40/main/local/walker2d/medium-replay-v0/main-s0 $R/d40/main/local/walker2d/medium-replay-v0/main-s1
  $R/pf/base/local/walker2d/medium-replay-v0/main-s7"
HOPPER="$R/floor/floor/local/hopper/medium-v0/main-s0 $R/floor/floor/local/hopper/medium-v0/main-s1
  $R/pf/pair/local/hopper/medium-v0/main-s7 $R/d40/main/local/hopper/medium-replay-v0/main-s0
  $R/d40/main/local/hopper/medium-replay-v0/main-s3 $R/pf/base/local/hopper/medium-replay-v0/main-s7"
if [ "$1" = 1 ]; then  # about 7 minutes a run: walker2d medium first (where the regret is), then the rest
  for group in WM WMR HOPPER; do
    $PY scripts/reselect.py ${!group} --states 1024 --t0_views $R/t0views --json $O/t0-$group.json \
        > $O/t0-$group.log 2>&1
  done
else
  for group in WM WMR HOPPER; do
    $PY scripts/imitation_select_probe.py ${!group} --json $O/imitation-$group.jsonl > $O/imitation-$group.log 2>&1
  done
fi
