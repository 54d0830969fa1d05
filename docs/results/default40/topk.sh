#!/bin/bash
# RESULTS 0u's replay of amq-topk-online on the ten runs whose summary holds today's fresh AM-Q
cd /work/exp || exit 1
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 PYTHONPATH=/work/exp
PY=/work/main/.venv/bin/python; R=/work/main/runs; O=/work/main/docs/results/default40/probes
for group in "pf/pair/local/hopper/medium-v0/main-s7 pf/pair/local/walker2d/medium-v0/main-s7
    pf/pair/local/walker2d/medium-v0/main-s8 pf/base/local/hopper/medium-replay-v0/main-s7
    pf/base/local/walker2d/medium-replay-v0/main-s7 d40/main/local/hopper/medium-replay-v0/main-s0
    d40/main/local/hopper/medium-replay-v0/main-s3 d40/main/local/walker2d/medium-replay-v0/main-s0
    d40/main/local/walker2d/medium-replay-v0/main-s1" "pf/pair/local/halfcheetah/medium-replay-v0/main-s7"; do
  case $group in *halfcheetah*) export MINARI_DATASETS_PATH=/work/datasets-extra; T=cheetah ;;
                 *) export MINARI_DATASETS_PATH=/work/shared/datasets; T=hw ;; esac
  $PY scripts/reselect.py $(for r in $group; do echo $R/$r; done) --topk 2 --episodes 3 --json $O/topk-$T.json \
      > $O/topk-$T.log 2>&1
done
