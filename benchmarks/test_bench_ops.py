"""Fused kernels vs their pure-PyTorch references, timed side by side (pytest-benchmark).

`make bench` runs this file and prints one table through benchmarks/report.py.
"""

import pytest
import torch

from benchmarks.cases import MATMUL_FLOPS, cases, matmul_rate
from uepo import ops

CASES = {c.key: c for c in cases()}


@pytest.mark.skipif(not ops.compiled_available(), reason="the compiled kernels are not loaded")
@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("key", list(CASES))
def test_op(benchmark, key, impl):
    case = CASES[key]
    benchmark.group = key
    benchmark.extra_info.update(key=key, impl=impl, flops=case.flops, label=case.label)
    benchmark(getattr(case, impl))


def test_matmul_rate(benchmark):
    benchmark.group = "matmul"
    benchmark.extra_info.update(key="matmul", impl="matmul", flops=MATMUL_FLOPS, threads=torch.get_num_threads())
    benchmark(matmul_rate())
