#!/bin/bash
# RESULTS 0u's runs, one per call (from /work/exp, a worktree of the registration commit):
#   run.sh main D S [REUSE]   today's default (diffusion: start floor, 1024 fresh selection states by policy kind);
#                             phase A and T̂0 reused from REUSE when given (they do not depend on phase B)
#   run.sh gauss D S REUSE    the Gaussian ensemble, phase A and T̂0 reused from REUSE (the seed's main run)
#   run.sh reselect RUN       scripts/reselect.py --states 1024 on a finished start-floor run (RESULTS 0s's replay)
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1 PYTHONPATH=/work/exp
case "$2" in *halfcheetah*) export MINARI_DATASETS_PATH=/work/datasets-extra ;;
             *) export MINARI_DATASETS_PATH=/work/shared/datasets ;; esac
cd /work/exp || exit 1
PY=/work/main/.venv/bin/python; LANES_LOG=/work/main/runs/d40/lanes.log; O=/work/main/runs/d40
source /work/main/docs/results/lanes.sh
KIND=$1 D=$2 S=$3 REUSE=$4
COMMON="--dataset $D --preset bench --seed $S --threads 1 --phases offline"
case $KIND in
  main) one $O/main/$D/main-s$S $O/main/$D/main-s$S.log $COMMON ${REUSE:+--reuse_from $REUSE} ;;
  gauss) one $O/gauss/$D/gaussian-ensemble-s$S $O/gauss/$D/gaussian-ensemble-s$S.log $COMMON \
             --policy gaussian-ensemble --reuse_from $REUSE ;;
  reselect) J=/work/main/docs/results/default40/reselect-$(echo "$D" | cut -d/ -f5- | tr '/' '_').json
            [ -s $J ] || { $PY scripts/reselect.py "$D" --states 1024 --json $J > ${J%.json}.log 2>&1
                           echo "$D reselect rc=$? $(date)" >> $LANES_LOG; } ;;
esac
