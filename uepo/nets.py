"""Networks. A denoiser maps (x_k (N, H, d_a), timestep k (N,), cond (N, C)) -> ε̂ (N, H, d_a);
the diffusion process and the solvers (uepo.diffusion) do not care which one it is.

The default denoiser is the residual MLP that the fused sampler kernel runs: its forward is
``residual_mlp_apply`` on ``kernel_weights()``, the very function the kernel computes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LAYER_NORM_EPS = 1e-5


def sinusoidal_embedding(t: Tensor, dim: int) -> Tensor:
    """[sin(t ω_k), cos(t ω_k)], ω_k = 10000^(-k / (dim/2 - 1)); computed in float64."""
    half = dim // 2
    scale = math.log(10000.0) / (half - 1)
    freqs = torch.exp(-scale * torch.arange(half, dtype=torch.float64, device=t.device))
    args = t.to(torch.float64)[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], dim=-1)


def residual_mlp_apply(weights: Sequence[Tensor], x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
    """The residual-MLP denoiser as a function of its ``kernel_weights()``.

    x (N, H·d_a), t (N,) timesteps, cond (N, C) -> ε̂ (N, H·d_a). Layout of the input layer:
    [x, time embedding, cond].
    """
    w = list(weights)
    time_dim = w[3].shape[0]
    temb = sinusoidal_embedding(t, time_dim).to(x.dtype)
    temb = F.linear(F.mish(F.linear(temb, w[0], w[1])), w[2], w[3])
    h = F.linear(torch.cat([x, temb, cond], dim=-1), w[4], w[5])
    for j in range((len(w) - 10) // 6):
        ln_w, ln_b, w1, b1, w2, b2 = w[6 + 6 * j : 12 + 6 * j]
        u = F.layer_norm(h, (h.shape[-1],), ln_w, ln_b, LAYER_NORM_EPS)
        h = h + F.linear(F.mish(F.linear(u, w1, b1)), w2, b2)
    out_ln_w, out_ln_b, out_w, out_b = w[-4:]
    u = F.mish(F.layer_norm(h, (h.shape[-1],), out_ln_w, out_ln_b, LAYER_NORM_EPS))
    return F.linear(u, out_w, out_b)


class ResidualBlock(nn.Module):
    """h + fc2(mish(fc1(LayerNorm(h))))."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)


class ResidualMLPDenoiser(nn.Module):
    """ε_θ(x_k, k, S): residual MLP on [x_k, MLP(sinusoidal(k)), flatten(S)] (Diffusion-QL/IDQL)."""

    def __init__(
        self,
        horizon: int,
        action_dim: int,
        cond_dim: int,
        width: int = 256,
        num_blocks: int = 3,
        time_dim: int = 32,
        hidden: int | None = None,
    ):
        super().__init__()
        if time_dim < 4 or time_dim % 2:
            raise ValueError(f"time_dim must be even and >= 4, got {time_dim}")
        self.horizon, self.action_dim, self.cond_dim = horizon, action_dim, cond_dim
        hidden = hidden or width
        self.time_mlp = nn.ModuleList([nn.Linear(time_dim, 2 * time_dim), nn.Linear(2 * time_dim, time_dim)])
        self.input = nn.Linear(horizon * action_dim + time_dim + cond_dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, hidden) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.out = nn.Linear(width, horizon * action_dim)

    def kernel_weights(self) -> list[Tensor]:
        """Parameters in the order the fused sampler takes them (see csrc/ops.cpp)."""
        w = [self.time_mlp[0].weight, self.time_mlp[0].bias, self.time_mlp[1].weight, self.time_mlp[1].bias,
             self.input.weight, self.input.bias]
        for blk in self.blocks:
            w += [blk.norm.weight, blk.norm.bias, blk.fc1.weight, blk.fc1.bias, blk.fc2.weight, blk.fc2.bias]
        return w + [self.out_norm.weight, self.out_norm.bias, self.out.weight, self.out.bias]

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x (N, H, d_a), t (N,) integer timesteps, cond (N, C) -> ε̂ (N, H, d_a)."""
        n = x.shape[0]
        eps = residual_mlp_apply(self.kernel_weights(), x.reshape(n, -1), t, cond.reshape(n, -1))
        return eps.view(n, self.horizon, self.action_dim)
