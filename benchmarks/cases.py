"""The benchmark grid: each case builds its inputs once and names its FLOP count.

FLOPs count multiply-adds as 2. The floor of a case is its FLOPs over the float32 matmul rate
measured in the same run (``matmul_rate``): no implementation runs much under it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from uepo import ops
from uepo.diffusion import Schedule, SeedBank
from uepo.nets import ResidualMLPDenoiser

# Hopper sizes (SPEC defaults): d_s = 11, d_a = 3, history T_o = 2, chunk H = 8.
OBS_DIM, ACT_DIM, HISTORY, HORIZON = 11, 3, 2, 8
WIDTH, BLOCKS, TIME_DIM, SEEDS, STEPS = 256, 3, 32, 4, 10


@dataclass
class Case:
    key: str  # name in latest.json
    label: str  # what the table row says
    fused: Callable[[], object]
    reference: Callable[[], object]
    flops: float


def sampler_case(batch: int, prediction: str = "eps") -> Case:
    """The fused DDIM chain against its PyTorch reference; ``prediction`` x0 / v: a network that predicts x̂_0
    or v (``--pretrain.prediction``), whose output each step turns into ε̂ (before stop 31 such a policy ran
    the PyTorch chain)."""
    torch.manual_seed(0)
    net = ResidualMLPDenoiser(HORIZON, ACT_DIM, HISTORY * OBS_DIM, WIDTH, BLOCKS, TIME_DIM)
    steps = Schedule(100).ddim(STEPS)
    bank = SeedBank.draw(SEEDS, STEPS, HORIZON, ACT_DIM, base_seed=0)
    cond = torch.randn(batch, HISTORY * OBS_DIM)
    weights = net.kernel_weights()
    args = (cond, bank.noise, bank.perturb, weights, steps.timesteps, steps.alpha_bars, HORIZON, 0.1, 1.0)
    kw = {"prediction": prediction}
    chunk = HORIZON * ACT_DIM
    # Per row (state x seed) and step: chunk input rows, blocks, output layer; the state and time
    # rows of the input layer are per state / per step and negligible.
    per_row_step = 2 * (chunk * WIDTH + BLOCKS * 2 * WIDTH * WIDTH + WIDTH * chunk)
    return Case(
        key=f"sampler_b{batch}" + ("" if prediction == "eps" else f"_{prediction}"),
        label=f"sampler B={batch} n={SEEDS} K_s={STEPS} H={HORIZON} d_a={ACT_DIM} {WIDTH}x{BLOCKS}"
              + ("" if prediction == "eps" else f", {prediction}-prediction"),
        fused=lambda: ops.multiseed_sample(*args, **kw),
        reference=lambda: ops.reference_multiseed_sample(*args, **kw),
        flops=float(batch * SEEDS * STEPS * per_row_step),
    )


def divergence_case(batch: int, seeds: int, horizon: int, act_dim: int, key: str | None = None) -> Case:
    g = torch.Generator().manual_seed(0)
    chunks = torch.randn(batch, seeds, horizon, act_dim, generator=g, requires_grad=True)
    upstream = torch.randn(batch, seeds, seeds, generator=g)

    def run(fn):
        def step():
            chunks.grad = None
            (fn(chunks) * upstream).sum().backward()
        return step

    pairs = batch * seeds * (seeds - 1) / 2
    vel, acc = (horizon - 1) * act_dim, (horizon - 2) * act_dim
    forward = pairs * (3 * vel + 2 * acc + 6 * horizon) + batch * seeds * (vel + 4 * acc)
    return Case(
        key=key or f"divergence_b{batch}_n{seeds}_h{horizon}_d{act_dim}",
        label=f"divergence fwd+bwd B={batch} n={seeds} H={horizon} d_a={act_dim}",
        fused=run(ops.divergence),
        reference=run(ops.reference_divergence),
        flops=3.0 * forward,  # backward ~ twice the forward
    )


def cases() -> list[Case]:
    return [
        sampler_case(1),
        sampler_case(16),
        sampler_case(256),
        sampler_case(1, "x0"),
        sampler_case(256, "x0"),
        divergence_case(256, 4, 8, 6, key="divergence_fwd_bwd"),
        divergence_case(4096, 8, 8, 3),
    ]


# The keys the issue reports on; the rest of the grid is printed too.
HEADLINE = {"sampler_b1": 8.0, "sampler_b256": 2.0, "divergence_fwd_bwd": 5.0}


def matmul_rate() -> Callable[[], object]:
    """A float32 (1024 x 256) @ (256 x 256) product: the sampler's dominant shape."""
    a, b = torch.randn(1024, 256), torch.randn(256, 256)
    out = torch.empty(1024, 256)
    return lambda: torch.mm(a, b, out=out)


MATMUL_FLOPS = 2.0 * 1024 * 256 * 256
