#!/bin/bash
# Shared by the lane scripts of docs/results/*/ (sourced, not run). Needs PY (the python), M (ε and Gaussian
# runs), X (x̂₀ + gate runs), R (the runs root: against_default) and LANES_LOG. The ε runs name ε explicitly: x̂₀ + gate
# is the default since stop 34.
one() {  # run_dir log flags...: one uepo.train, skipped when done, resumed when started
  local RD=$1 LOG=$2; shift 2
  grep -qs '"scores"' $RD/summary.json && return  # summary.json exists from phase A on; scores come last
  mkdir -p $(dirname $RD)
  if [ -f $RD/config.yaml ]; then $PY -m uepo.train --run_dir $RD --resume > $LOG 2>&1
  else $PY -m uepo.train --run_dir $RD "$@" > $LOG 2>&1; fi
  echo "$RD rc=$? $(date)" >> $LANES_LOG
}
trio() {  # D S: ε -> x̂₀ + gate (critics and T̂0 reused from the ε run) -> Gaussian ensemble (phase A reused)
  local D=$1 S=$2
  local COMMON="--dataset $D --preset bench --seed $S --threads 1 --phases offline"
  one $M/$D/main-s$S $M/$D/main-s$S.log $COMMON --pretrain.prediction eps --improve.accept_z 0
  one $X/$D/main-s$S $X/$D/main-s$S.log $COMMON --pretrain.prediction x0 --improve.accept_z 1.645 \
      --reuse_from $M/$D/main-s$S
  one $M/$D/gaussian-ensemble-s$S $M/$D/gaussian-ensemble-s$S.log $COMMON --policy gaussian-ensemble \
      --reuse_from $M/$D/main-s$S
}
against_default() {  # KIND NAME "FLAGS" "JOB KIND D S"...: RESULTS 0o/0p's lanes. A job of kind KIND runs the
  # default + FLAGS into $R/NAME, phase A and T̂0 reused from the seed's default run (0l's $R/xg, 0n's
  # $R/cheetah-xg); base makes that default run (HalfCheetah seeds without one); gauss the Gaussian ensemble
  # beside it (phase A reused), for issue 8's targets. Other kinds are skipped.
  local NEW=$1 NAME=$2 FLAGS=$3 job KIND D S B COMMON; shift 3
  for job in "$@"; do
    set -- $job; KIND=$1 D=$2 S=$3
    case $D in
      local/halfcheetah/*) export MINARI_DATASETS_PATH=/work/datasets-extra; B=$R/cheetah-xg/$D/main-s$S ;;
      *) export MINARI_DATASETS_PATH=/work/shared/datasets; B=$R/xg/$D/main-s$S ;;
    esac
    COMMON="--dataset $D --preset bench --seed $S --threads 1 --phases offline"
    case $KIND in
      base) one $B $B.log $COMMON ;;
      gauss) one $R/cheetah/$D/gaussian-ensemble-s$S $R/cheetah/$D/gaussian-ensemble-s$S.log $COMMON \
                 --policy gaussian-ensemble --reuse_from $B ;;
      "$NEW") one $R/$NAME/$D/main-s$S $R/$NAME/$D/main-s$S.log $COMMON $FLAGS --reuse_from $B ;;
    esac
  done
}
