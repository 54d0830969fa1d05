#!/bin/bash
# Stop 36: phase E at today's defaults from x̂₀ + gate offline runs (0l's runs/xg; A–D copied, E runs):
# hopper medium s0 (0g's ε run of the same seed: docs/results/online/today-1e6/hopper-m-s0) and walker2d medium s3.
# --improve.accept_z 1.645: the runs/xg configs name it; -1 (today's default) resolves to it but would rerun D.
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive PYTHONUNBUFFERED=1 MINARI_DATASETS_PATH=/work/shared/datasets
cd /work/exp
PY=/work/main/.venv/bin/python; R=/work/main/runs
on() {  # robot seed
  $PY -m uepo.train --dataset local/$1/medium-v0 --preset bench-online --seed $2 --phases all --threads 1 \
      --improve.accept_z 1.645 --reuse_from $R/xg/local/$1/medium-v0/main-s$2 --run_dir $R/online-x0/$1-m-s$2 \
      > $R/online-x0/$1-m-s$2.log 2>&1
  echo "$1 s$2 rc=$? $(date)" >> $R/online-x0/lanes.log
}
on hopper 0 & on walker2d 3 & wait
