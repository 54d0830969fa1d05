#!/bin/bash
# Added after registration, before any 0u run had finished: once lane 2 is done, the Gaussian ensemble on hopper
# medium s0 at this code (phase A reused from 0r's floor run, which holds the x̂₀ + gate run's phase A), to see
# whether the Gaussian runs this section borrows from stop 24 (docs/results/matrix-400.json, s0: 24.1) still hold.
while pgrep -f "default40/lanes.sh 2" > /dev/null; do sleep 30; done
bash /work/main/docs/results/default40/run.sh gauss local/hopper/medium-v0 0 \
    /work/main/runs/floor/floor/local/hopper/medium-v0/main-s0
