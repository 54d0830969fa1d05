#!/bin/bash
# RESULTS 0p's lanes. usage: lane.sh "KIND D S" ...  (run from /work/exp, a worktree of the registration commit)
# KIND  pair:  the default + --pretrain.start_fraction 0.25 --pretrain.first_action_weight 8, phase A and T̂0
#              reused from the seed's default run (the same computation)
#       base:  the default (HalfCheetah seed 2: no default run exists there)
#       gauss: the Gaussian ensemble (its phase A reused from the base run), for issue 8's targets on that seed
# The Hopper/Walker2d default runs are 0l's x̂₀ + gate runs (runs/xg), their Gaussian runs 0l's matrix-fresh.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1
cd /work/exp
PY=/work/main/.venv/bin/python; R=/work/main/runs; LANES_LOG=$R/pair/lanes.log
source /work/main/docs/results/lanes.sh
against_default pair pair "--pretrain.start_fraction 0.25 --pretrain.first_action_weight 8" "$@"
