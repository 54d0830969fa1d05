"""GPU timings of the fused ops beside their references (CUDA events, median of repeats).

Run on a machine with a GPU after building uepo there (scripts/gpu_check.sh does both):
    python -m benchmarks.gpu [--out results.json]
The same cases as the CPU suite (benchmarks/cases.py) plus larger batches that fill the GPU. Each case
is timed three ways: the fused op, the eager PyTorch reference, and that reference captured once in a
CUDA graph and replayed (what ``torch.cuda.graphs`` gives any eager code without a kernel of its own;
at B = 1 launch overhead is most of the eager time, so this is the baseline a fused kernel must beat).
Targets (issue 9): sampler B = 1 (n 4, K_s 10) ≤ 100 µs and ≥ 5× the CUDA-graph eager reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

from uepo import graphs, ops
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


def cuda_graphed(fn):
    """``fn`` captured in a CUDA graph (uepo.graphs.capture), as a replay function; None when ``fn`` cannot
    be captured (a host sync, a CPU tensor), with the reason printed."""
    try:
        return graphs.capture(fn)
    except Exception as exc:  # noqa: BLE001 (report, go on with the other cases)
        print(f"  (not capturable in a CUDA graph: {type(exc).__name__}: {str(exc)[:120]})")
        torch.cuda.synchronize()
        return None


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


def acting_pair(num_envs: int):
    """Phase E's acting step (sampler + head + draw, uepo.phases.online.OnlineAgent.acting_step) at the
    default network sizes: eager, and replayed from a CUDA graph (--online.cuda_graph)."""
    from uepo.config import OnlineConfig
    from uepo.nets import ValueNet
    from uepo.phases.online import OnlineAgent
    from uepo.policy import MultiSeedPolicy, policy_config

    torch.manual_seed(0)
    cfg = policy_config("diffusion", OBS, ACT, HIST, HORIZON, SEEDS, sampling_steps=STEPS, tau=1.0)
    policy = MultiSeedPolicy(cfg, torch.zeros(OBS), torch.ones(OBS)).cuda()
    value = ValueNet(OBS, 256, 2).cuda()
    hist = torch.randn(num_envs, HIST, OBS, device="cuda")
    eager = OnlineAgent(policy, 0, value, OnlineConfig()).acting_step(num_envs)
    with torch.inference_mode():
        graphed = OnlineAgent(policy, 0, value, OnlineConfig(cuda_graph=True)).acting_step(num_envs)

    def run(step):
        def call():
            with torch.inference_mode():
                step(hist)
        return call

    return run(graphed), run(eager)


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
    print(f"{'case':24s} {'fused ms':>10s} {'eager ms':>10s} {'graph ms':>10s} {'vs graph':>9s} {'vs eager':>9s}")
    for key, (fused, reference) in cases.items():
        f, r = cuda_time(fused), cuda_time(reference)
        replay = cuda_graphed(reference)
        g = cuda_time(replay) if replay is not None else None
        result[key] = {"fused_s": f, "reference_s": r, "ratio": r / f, "graph_s": g,
                       "ratio_vs_graph": None if g is None else g / f}
        graph_text = f"{g * 1e3:10.3f} {g / f:8.2f}x" if g is not None else f"{'—':>10s} {'—':>9s}"
        print(f"{key:24s} {f * 1e3:10.3f} {r * 1e3:10.3f} {graph_text} {r / f:8.2f}x")
    print(f"{'acting step':24s} {'graph ms':>10s} {'eager ms':>10s} {'speed-up':>9s}")
    for num_envs in (1, 8):
        graphed, eager = acting_pair(num_envs)
        g, e = cuda_time(graphed), cuda_time(eager)
        result[f"acting_step_{num_envs}env"] = {"graph_s": g, "eager_s": e, "ratio": e / g}
        print(f"{f'acting_step_{num_envs}env':24s} {g * 1e3:10.3f} {e * 1e3:10.3f} {e / g:8.2f}x")
    b1 = result["sampler_b1"]
    result["targets"] = {"sampler_b1_le_100us": b1["fused_s"] <= 100e-6,
                         "sampler_b1_ge_5x_graph": b1["ratio_vs_graph"] is not None and b1["ratio_vs_graph"] >= 5}
    print(f"targets: {result['targets']}")
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
