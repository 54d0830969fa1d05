"""GPU timings of the fused ops beside their references (CUDA events, median of repeats).

Run on a machine with a GPU after building uepo there (scripts/gpu_check.sh does both):
    python -m benchmarks.gpu [--out results.json]
The same cases as the CPU suite (benchmarks/cases.py) plus larger batches that fill the GPU.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from uepo import ops
from uepo.diffusion import Schedule, SeedBank
from uepo.nets import ResidualMLPDenoiser

OBS, ACT, HIST, HORIZON, SEEDS, STEPS = 11, 3, 2, 8, 4, 10


def cuda_time(fn, repeats: int = 30, warmup: int = 5) -> float:
    """Median seconds of fn() measured with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def sampler_pair(batch: int):
    torch.manual_seed(0)
    net = ResidualMLPDenoiser(HORIZON, ACT, HIST * OBS).cuda()
    steps = Schedule(100).ddim(STEPS)
    bank = SeedBank.draw(SEEDS, STEPS, HORIZON, ACT, 0, device="cuda")
    cond = torch.randn(batch, HIST * OBS, device="cuda")
    args = (cond, bank.noise, bank.perturb, net.kernel_weights(), steps.timesteps, steps.alpha_bars, HORIZON, 0.1, 1.0)
    return lambda: ops.multiseed_sample(*args), lambda: ops.reference_multiseed_sample(*args)


def divergence_pair(batch: int, seeds: int, horizon: int, act: int):
    chunks = torch.randn(batch, seeds, horizon, act, device="cuda", requires_grad=True)
    up = torch.randn(batch, seeds, seeds, device="cuda")

    def run(fn):
        def step():
            chunks.grad = None
            (fn(chunks) * up).sum().backward()
        return step

    return run(ops.divergence), run(ops.reference_divergence)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="benchmarks/gpu_latest.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or ops.backend("cuda") != "cuda":
        print(f"needs a GPU and uepo's CUDA kernels (backend: {ops.backend('cuda')})")
        return 1
    cases = {f"sampler_b{b}": sampler_pair(b) for b in (1, 256, 4096, 65536)}
    cases.update({"divergence_fwd_bwd": divergence_pair(256, 4, 8, 6),
                  "divergence_b65536_n8": divergence_pair(65536, 8, 8, 3)})
    result = {"_meta": {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "statistic": "median"}}
    print(f"{'case':24s} {'fused ms':>10s} {'reference ms':>13s} {'ratio':>7s}")
    for key, (fused, reference) in cases.items():
        f, r = cuda_time(fused), cuda_time(reference)
        result[key] = {"fused_s": f, "reference_s": r, "ratio": r / f}
        print(f"{key:24s} {f * 1e3:10.3f} {r * 1e3:13.3f} {r / f:6.2f}x")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
