#!/bin/bash
# RESULTS 0o's lanes. usage: lane.sh "KIND D S" ...  (run from /work/exp, a worktree of the registration commit)
# KIND  sf:    the default + --pretrain.start_fraction 0.25, phase A and T̂0 reused from the seed's default run
#       base:  the default (HalfCheetah medium-replay s1 only: 0n stopped it, so no default run exists there)
#       gauss: the Gaussian ensemble (its phase A reused from the base run), for issue 8's targets on that seed
# The default runs of the other seeds are 0l's x̂₀ + gate runs (runs/xg) and 0n's (runs/cheetah-xg).
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
cd /work/exp
PY=/work/main/.venv/bin/python; R=/work/main/runs; LANES_LOG=$R/startfrac/lanes.log
source /work/main/docs/results/lanes.sh
against_default sf startfrac "--pretrain.start_fraction 0.25" "$@"
