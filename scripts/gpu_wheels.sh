#!/usr/bin/env bash
# Wheels that a lent GPU machine lacks (its image has torch, numpy, h5py, typer, ... but not the
# simulators), downloaded here for its Python 3.12 into .whl/ (git-ignored), to travel with the run:
#   bash scripts/gpu_wheels.sh            # here, once
#   device run, carry [".whl"]: bash scripts/gpu_check.sh   # installs them first
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    minari==0.5.4 gymnasium==1.4.0 farama-notifications==0.0.6 mujoco==4.0.0 mujoco-core==4.0.0 \
    mujoco-studio==4.0.0 glfw==2.11.0 pyopengl==3.1.10 websockets==15.0.1
du -sh .whl
