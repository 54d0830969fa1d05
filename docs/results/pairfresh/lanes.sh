#!/bin/bash
# RESULTS 0t's two lanes, in registration order: bash lanes.sh 1 & bash lanes.sh 2 &
# (hopper and walker2d medium-replay have no pair run: the floor adds no row there, so their base run is both arms)
R="bash /work/main/docs/results/pairfresh/run.sh"
mkdir -p /work/main/runs/pf
if [ "$1" = 1 ]; then
  $R base local/walker2d/medium-v0 7;  $R pair local/walker2d/medium-v0 7
  $R base local/hopper/medium-v0 7;    $R pair local/hopper/medium-v0 7
  $R base local/hopper/medium-replay-v0 7
else
  $R base local/halfcheetah/medium-replay-v0 7;  $R pair local/halfcheetah/medium-replay-v0 7
  $R base local/walker2d/medium-v0 8;  $R pair local/walker2d/medium-v0 8
  $R base local/walker2d/medium-replay-v0 7
fi
