#!/bin/bash
# RESULTS 0r's two lanes, in registration order: bash lanes.sh 1 & bash lanes.sh 2 &
R="bash /work/main/docs/results/floor/run.sh"; Q=/work/main/runs/q/mild/local/halfcheetah/medium-replay-v0
B=/work/main/runs/floor/base/local/halfcheetah/medium-replay-v0/main-s3
mkdir -p /work/main/runs/floor
if [ "$1" = 1 ]; then  # batch 1, then batch 2
  $R floor local/halfcheetah/medium-replay-v0 1 $Q/main-s1
  $R floor local/halfcheetah/medium-replay-v0 0
  $R floor local/hopper/medium-v0 0
  $R floor local/walker2d/medium-v0 5
  $R floor local/walker2d/medium-v0 6
  $R base local/halfcheetah/medium-replay-v0 3
  $R floor local/halfcheetah/medium-replay-v0 3 $B
else
  $R floor local/halfcheetah/medium-replay-v0 2 $Q/main-s2
  $R floor local/halfcheetah/medium-v0 0
  $R floor local/halfcheetah/medium-v0 1
  $R floor local/hopper/medium-v0 1
  $R floor local/walker2d/medium-v0 3
  $R floor local/halfcheetah/medium-v0 2
  while [ ! -f $B/summary.json ]; do sleep 60; done
  $R gauss local/halfcheetah/medium-replay-v0 3 $B
fi
