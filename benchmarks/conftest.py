"""Benchmarks run on one thread, fused and reference side by side in the same process."""

import os

import torch

os.environ.setdefault("OMP_WAIT_POLICY", "passive")
torch.set_num_threads(1)
