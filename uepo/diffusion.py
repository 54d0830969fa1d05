"""The diffusion process (cosine schedule, ε-prediction) and its solvers, apart from the network.

The solver and its number of steps can change after training: a ``Schedule`` holds the K
training ᾱ's, and ``Schedule.ddim(K_s)`` picks the K_s sampling steps. Sub-policy i of the
multi-seed policy is the deterministic map S -> DDIM(S; ε_i, z^i) with its noise fixed by a
``SeedBank`` (SPEC §3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from uepo import ops
from uepo.nets import ResidualMLPDenoiser


def cosine_alpha_bars(num_steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """ᾱ_k for training timesteps k = 0..K-1 of the cosine schedule (Nichol & Dhariwal), float64."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cumprod(1 - betas, dim=0)


@dataclass(frozen=True)
class DDIMSteps:
    """The K_s sampling steps: training timesteps (noisiest first) and ᾱ at each, then 1."""

    timesteps: tuple[int, ...]
    alpha_bars: tuple[float, ...]  # K_s + 1 values


class Schedule:
    """The forward process q(x_k | x_0) = N(√ᾱ_k x_0, (1 − ᾱ_k) I)."""

    def __init__(self, num_steps: int = 100):
        self.num_steps = num_steps
        self.alpha_bars = cosine_alpha_bars(num_steps)

    def add_noise(self, x0: Tensor, noise: Tensor, k: Tensor) -> Tensor:
        """x_k = √ᾱ_k x_0 + √(1 − ᾱ_k) ε for per-row timesteps k (N,)."""
        ab = self.alpha_bars.to(x0.device)[k].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def ddim(self, sampling_steps: int) -> DDIMSteps:
        """K_s steps evenly spaced over the K training timesteps, from K−1 down to 0."""
        if not 1 <= sampling_steps <= self.num_steps:
            raise ValueError(f"sampling_steps must be in [1, {self.num_steps}], got {sampling_steps}")
        ts = torch.linspace(self.num_steps - 1, 0, sampling_steps).round().long().tolist()
        abars = [float(self.alpha_bars[t]) for t in ts] + [1.0]
        return DDIMSteps(tuple(int(t) for t in ts), tuple(abars))


class X0PredictionDenoiser(nn.Module):
    """A network that predicts the clean chunk x̂_0(x_k, k, S), seen by the solvers as the ε̂ it implies.

    ``forward`` returns ε̂ = (x_k − √ᾱ_k x̂_0) / √(1 − ᾱ_k), so every chain (DDIM, DDPM, the KL term's)
    runs unchanged and recovers x̂_0 exactly; the loss is on x̂_0 (``predict_x0``). At high noise
    the optimal x̂_0 is E[x_0 | S], the regression a Gaussian BC member fits, which ε-prediction's
    loss weighs by ᾱ/(1 − ᾱ) ≈ 0 there. Around the residual MLP the fused sampler runs it (``fused_denoiser``).
    """

    prediction = "x0"  # what ``net`` outputs, as ``ops.multiseed_sample`` names it

    def __init__(self, net: nn.Module, num_steps: int):
        super().__init__()
        self.net = net
        self.horizon, self.action_dim = net.horizon, net.action_dim
        self.register_buffer("alpha_bars", cosine_alpha_bars(num_steps), persistent=False)  # float64

    def predict_x0(self, x: Tensor, k: Tensor, cond: Tensor) -> Tensor:
        """x_k (N, H, d_a), k (N,), cond (N, C) -> x̂_0 (N, H, d_a)."""
        return self.net(x, k, cond)

    def alpha_bar(self, k: Tensor, x: Tensor) -> Tensor:
        """ᾱ_k per row (N,) -> (N, 1, 1) in x's dtype."""
        return self.alpha_bars[k].to(x.dtype).view(-1, 1, 1)

    def forward(self, x: Tensor, k: Tensor, cond: Tensor) -> Tensor:
        ab = self.alpha_bar(k, x)
        return (x - ab.sqrt() * self.predict_x0(x, k, cond)) / (1 - ab).sqrt()

    def training_pair(self, x: Tensor, k: Tensor, cond: Tensor, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(x̂_0, x_0): what the loss compares, for x_k = √ᾱ_k x_0 + √(1 − ᾱ_k) ε."""
        return self.predict_x0(x, k, cond), x0


class VPredictionDenoiser(X0PredictionDenoiser):
    """A network that predicts v = √ᾱ_k ε − √(1 − ᾱ_k) x_0 (Salimans & Ho), seen by the solvers as the ε̂
    it implies, ε̂ = √ᾱ_k v̂ + √(1 − ᾱ_k) x_k. Measured on x̂_0 its loss weighs step k by 1/(1 − ᾱ_k), the
    sum of x̂₀-prediction's 1 and ε-prediction's ᾱ_k/(1 − ᾱ_k): like x̂₀ at high noise, like ε at low noise."""

    prediction = "v"

    def predict_v(self, x: Tensor, k: Tensor, cond: Tensor) -> Tensor:
        """x_k (N, H, d_a), k (N,), cond (N, C) -> v̂ (N, H, d_a)."""
        return self.net(x, k, cond)

    def predict_x0(self, x: Tensor, k: Tensor, cond: Tensor) -> Tensor:
        ab = self.alpha_bar(k, x)
        return ab.sqrt() * x - (1 - ab).sqrt() * self.predict_v(x, k, cond)

    def forward(self, x: Tensor, k: Tensor, cond: Tensor) -> Tensor:
        ab = self.alpha_bar(k, x)
        return ab.sqrt() * self.predict_v(x, k, cond) + (1 - ab).sqrt() * x

    def training_pair(self, x: Tensor, k: Tensor, cond: Tensor, x0: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(v̂, v), v = √ᾱ_k ε − √(1 − ᾱ_k) x_0."""
        ab = self.alpha_bar(k, x)
        return self.predict_v(x, k, cond), ab.sqrt() * eps - (1 - ab).sqrt() * x0


PREDICTION_WRAPPERS = {"x0": X0PredictionDenoiser, "v": VPredictionDenoiser}  # eps: the network itself


def fused_denoiser(denoiser: nn.Module) -> tuple[ResidualMLPDenoiser, str] | None:
    """(the residual MLP, what it outputs) where the fused sampler can run ``denoiser``, else None (U-Net)."""
    if isinstance(denoiser, ResidualMLPDenoiser):
        return denoiser, "eps"
    if isinstance(denoiser, X0PredictionDenoiser) and isinstance(denoiser.net, ResidualMLPDenoiser):
        return denoiser.net, denoiser.prediction
    return None


def training_pair(net: nn.Module, x: Tensor, k: Tensor, cond: Tensor, x0: Tensor,
                  eps: Tensor) -> tuple[Tensor, Tensor]:
    """(prediction, target) of the denoiser's loss in its own parametrisation: (ε̂, ε) for a network that
    predicts ε (SPEC), (x̂_0, x_0) or (v̂, v) for the wrappers above. x_k (N, H, d_a), k (N,), cond (N, C)."""
    if isinstance(net, X0PredictionDenoiser):
        return net.training_pair(x, k, cond, x0, eps)
    return net(x, k, cond), eps


@dataclass
class SeedBank:
    """Fixed initial noise ε_i (n, H, d_a) and perturbation directions z^i (n, K_s, H, d_a)."""

    noise: Tensor
    perturb: Tensor
    base_seed: int

    @classmethod
    def draw(cls, num_seeds: int, sampling_steps: int, horizon: int, action_dim: int,
             base_seed: int, dtype: torch.dtype = torch.float32,
             device: torch.device | str = "cpu", temperature: float = 1.0,
             offsets: Sequence[int] | None = None) -> SeedBank:
        """Sub-policy i draws from a generator seeded base_seed + offsets[i] (default: + i), once.

        ``temperature`` t scales the initial noise, ε_i ~ N(0, t² I): one full-variance draw
        commits a deterministic policy to the same far-out quantile at every state, a smaller t
        keeps it nearer the action distribution's bulk (the directions z^i are not scaled).
        ``offsets``: the candidates that ``pretrain.seed_candidates`` kept.
        """
        if not temperature >= 0:
            raise ValueError(f"seed temperature must be >= 0, got {temperature}")
        offsets = list(range(num_seeds)) if offsets is None else list(offsets)
        if len(offsets) != num_seeds:
            raise ValueError(f"{num_seeds} seeds need {num_seeds} offsets, got {offsets}")
        noise, perturb = [], []
        for i in offsets:
            g = torch.Generator().manual_seed(base_seed + i)
            noise.append(temperature * torch.randn(horizon, action_dim, generator=g, dtype=torch.float64))
            perturb.append(torch.randn(sampling_steps, horizon, action_dim, generator=g, dtype=torch.float64))
        return cls(torch.stack(noise).to(device, dtype), torch.stack(perturb).to(device, dtype), base_seed)

    @property
    def num_seeds(self) -> int:
        return self.noise.shape[0]

    def select(self, indices: list[int]) -> SeedBank:
        """A bank of some of the seeds (e.g. one sub-policy for acting)."""
        return SeedBank(self.noise[indices], self.perturb[indices], self.base_seed)


def multiseed_sample(
    denoiser: nn.Module,
    cond: Tensor,
    steps: DDIMSteps,
    seeds: SeedBank,
    eta: float = 0.1,
    tau: float = 0.0,
    return_div: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """μ^i(S) for every seed of the bank: (B, C) -> chunks (B, n, H, d_a), no autograd.

    The residual-MLP denoiser, whatever it predicts, runs through the fused op (uepo.ops); any other
    denoiser through the same chain in PyTorch.
    """
    if seeds.perturb.shape[-3] != len(steps.timesteps):
        raise ValueError(
            f"the seed bank holds perturbations for {seeds.perturb.shape[-3]} steps but the solver "
            f"takes {len(steps.timesteps)}: draw the bank for this number of sampling steps"
        )
    fused = fused_denoiser(denoiser)
    if fused is not None:
        net, prediction = fused
        return ops.multiseed_sample(
            cond, seeds.noise, seeds.perturb, net.kernel_weights(), steps.timesteps,
            steps.alpha_bars, net.horizon, eta, tau, return_div=return_div, prediction=prediction,
        )

    def eps_fn(x: Tensor, t: int, c: Tensor) -> Tensor:
        return denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), c)

    with torch.no_grad():
        return ops.multiseed_ddim(eps_fn, cond, seeds.noise, seeds.perturb, steps.timesteps,
                                  steps.alpha_bars, eta, tau, return_div=return_div,
                                  divergence_fn=ops.divergence)


# ---------------------------------------------------------------------------------------------
# DDPM sampling (SPEC §3B, the option to DDIM): ancestral steps over all K timesteps, with the
# same adaptive perturbation. Sub-policy i stays a deterministic map: its per-step noise w^i_k
# is drawn once, like ε_i and z^i. PyTorch path only (the fused kernel runs DDIM).
# ---------------------------------------------------------------------------------------------

DDPM_NOISE_SEED_OFFSET = 1_000_003  # the step-noise generator of seed i is base_seed + i + this


def ddpm_step_noise(num_seeds: int, num_steps: int, horizon: int, action_dim: int, base_seed: int,
                    dtype: torch.dtype = torch.float32, temperature: float = 1.0,
                    offsets: Sequence[int] | None = None) -> Tensor:
    """Fixed ancestral noise w^i_k per seed and step, (n, K, H, d_a), scaled like ε_i by ``temperature``."""
    out = []
    for i in range(num_seeds) if offsets is None else offsets:
        g = torch.Generator().manual_seed(base_seed + i + DDPM_NOISE_SEED_OFFSET)
        out.append(temperature * torch.randn(num_steps, horizon, action_dim, generator=g, dtype=torch.float64))
    return torch.stack(out).to(dtype)


def multiseed_ddpm(
    denoiser: nn.Module,
    cond: Tensor,
    schedule: Schedule,
    seeds: SeedBank,
    step_noise: Tensor,
    eta: float = 0.1,
    tau: float = 0.0,
) -> Tensor:
    """μ^i(S) by DDPM ancestral sampling for every seed: (B, C) -> chunks (B, n, H, d_a), no autograd.

    ``seeds`` must hold perturbations for all K steps (``SeedBank.draw(n, K, ...)``) and
    ``step_noise`` the (n, K, H, d_a) ancestral noise.
    """
    K = schedule.num_steps
    n, H, D = seeds.noise.shape
    if seeds.perturb.shape[1] != K or step_noise.shape[:2] != (n, K):
        raise ValueError(f"DDPM sampling needs perturbations and step noise for all K = {K} steps")
    B = cond.shape[0]
    abars = schedule.alpha_bars.tolist()
    x = seeds.noise.expand(B, n, H, D).reshape(B * n, H, D).to(cond.dtype)
    cond_rows = cond.repeat_interleave(n, dim=0)
    with torch.no_grad():
        for s, t in enumerate(range(K - 1, -1, -1)):
            ab, ab_prev = abars[t], (abars[t - 1] if t > 0 else 1.0)
            eps_hat = denoiser(x, torch.full((B * n,), t, dtype=torch.long, device=x.device), cond_rows)
            x0 = ((x - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)).clamp(-1, 1)
            if K - s > 2 and eta > 0 and tau > 0 and n > 1:
                d = ops.nearest_competitor(ops.divergence(x0.view(B, n, H, D)))
                sigma = ops.perturbation_scale(d, tau, eta)[..., None, None]  # (B, n, 1, 1)
                x0 = (x0.view(B, n, H, D) + sigma * seeds.perturb[:, s].to(x0)).clamp(-1, 1)
                x0 = x0.reshape(B * n, H, D)
            if t == 0:
                x = x0
                break
            beta = 1 - ab / ab_prev
            mean = (math.sqrt(ab_prev) * beta / (1 - ab)) * x0 + (math.sqrt(1 - beta) * (1 - ab_prev) / (1 - ab)) * x
            std = math.sqrt(beta * (1 - ab_prev) / (1 - ab))
            w = step_noise[:, s].to(x).expand(B, n, H, D).reshape(B * n, H, D)
            x = mean + std * w
    return x.view(B, n, H, D)
