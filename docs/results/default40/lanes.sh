#!/bin/bash
# RESULTS 0u's two lanes, in registration order: bash lanes.sh 1 & bash lanes.sh 2 &
R="bash /work/main/docs/results/default40/run.sh"; Q=/work/main/runs/q/mild/local; P=/work/main/runs/pf/base/local
mkdir -p /work/main/runs/d40
if [ "$1" = 1 ]; then
  $R main local/hopper/medium-replay-v0 0
  $R main local/hopper/medium-replay-v0 3 $Q/hopper/medium-replay-v0/main-s3
  $R gauss local/hopper/medium-v0 7 $P/hopper/medium-v0/main-s7
  $R gauss local/hopper/medium-replay-v0 7 $P/hopper/medium-replay-v0/main-s7
  $R gauss local/halfcheetah/medium-replay-v0 7 $P/halfcheetah/medium-replay-v0/main-s7
else
  $R main local/walker2d/medium-replay-v0 0 $Q/walker2d/medium-replay-v0/main-s0
  $R main local/walker2d/medium-replay-v0 1 $Q/walker2d/medium-replay-v0/main-s1
  $R reselect /work/main/runs/floor/floor/local/halfcheetah/medium-v0/main-s2
  $R gauss local/walker2d/medium-v0 7 $P/walker2d/medium-v0/main-s7
  $R gauss local/walker2d/medium-v0 8 $P/walker2d/medium-v0/main-s8
  $R gauss local/walker2d/medium-replay-v0 7 $P/walker2d/medium-replay-v0/main-s7
fi
