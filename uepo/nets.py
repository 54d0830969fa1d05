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

    x (N, H·d_a), t (N,) timesteps, cond (N, C) -> ε̂ (N, H·d_a). Weight matrices are stored
    (in, out), so a layer is ``x @ W + b``; the input layer reads [x, time embedding, cond].
    """
    w = list(weights)
    time_dim = w[3].shape[0]
    temb = sinusoidal_embedding(t, time_dim).to(x.dtype)
    temb = torch.addmm(w[3], F.mish(torch.addmm(w[1], temb, w[0])), w[2])
    h = torch.addmm(w[5], torch.cat([x, temb, cond], dim=-1), w[4])
    for j in range((len(w) - 10) // 6):
        ln_w, ln_b, w1, b1, w2, b2 = w[6 + 6 * j : 12 + 6 * j]
        u = F.layer_norm(h, (h.shape[-1],), ln_w, ln_b, LAYER_NORM_EPS)
        h = h + torch.addmm(b2, F.mish(torch.addmm(b1, u, w1)), w2)
    out_ln_w, out_ln_b, out_w, out_b = w[-4:]
    u = F.mish(F.layer_norm(h, (h.shape[-1],), out_ln_w, out_ln_b, LAYER_NORM_EPS))
    return torch.addmm(out_b, u, out_w)


class Dense(nn.Module):
    """x @ W + b with W stored (in, out): the layout the fused kernels read without a transpose.

    Initialised like ``nn.Linear`` (uniform ±1/√in for weight and bias).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias


class ResidualBlock(nn.Module):
    """h + fc2(mish(fc1(LayerNorm(h))))."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.fc1 = Dense(width, hidden)
        self.fc2 = Dense(hidden, width)


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
        self.time_mlp = nn.ModuleList([Dense(time_dim, 2 * time_dim), Dense(2 * time_dim, time_dim)])
        self.input = Dense(horizon * action_dim + time_dim + cond_dim, width)
        self.blocks = nn.ModuleList(ResidualBlock(width, hidden) for _ in range(num_blocks))
        self.out_norm = nn.LayerNorm(width, eps=LAYER_NORM_EPS)
        self.out = Dense(width, horizon * action_dim)

    def kernel_weights(self) -> list[Tensor]:
        """Parameters in the order and layout the fused sampler takes them (see csrc/ops.cpp).

        The list is built once and kept (the sampler asks for it at every env step): it holds the
        Parameter objects themselves, which optimiser steps, ``load_state_dict`` and ``.to()`` update in
        place, so it stays current."""
        cached = self.__dict__.get("_kernel_weights")
        if cached is not None:
            return list(cached)
        w = [self.time_mlp[0].weight, self.time_mlp[0].bias, self.time_mlp[1].weight, self.time_mlp[1].bias,
             self.input.weight, self.input.bias]
        for blk in self.blocks:
            w += [blk.norm.weight, blk.norm.bias, blk.fc1.weight, blk.fc1.bias, blk.fc2.weight, blk.fc2.bias]
        w += [self.out_norm.weight, self.out_norm.bias, self.out.weight, self.out.bias]
        self.__dict__["_kernel_weights"] = w
        return list(w)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """x (N, H, d_a), t (N,) integer timesteps, cond (N, C) -> ε̂ (N, H, d_a)."""
        n = x.shape[0]
        eps = residual_mlp_apply(self.kernel_weights(), x.reshape(n, -1), t, cond.reshape(n, -1))
        return eps.view(n, self.horizon, self.action_dim)


# ---------------------------------------------------------------------------------------------
# Plain MLPs, critics, residual Gaussian head (SPEC §2)
# ---------------------------------------------------------------------------------------------


def mlp(in_dim: int, out_dim: int, hidden: int = 256, layers: int = 3,
        activation: type[nn.Module] = nn.ReLU, layer_norm: bool = False) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` (optionally LayerNorm'd), then a linear output."""
    mods: list[nn.Module] = []
    d = in_dim
    for _ in range(layers):
        mods.append(nn.Linear(d, hidden))
        if layer_norm:
            mods.append(nn.LayerNorm(hidden))
        mods.append(activation())
        d = hidden
    mods.append(nn.Linear(d, out_dim))
    return nn.Sequential(*mods)


class TwinQ(nn.Module):
    """Two independent Q(s, a) MLPs; IQL uses their minimum."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.q1 = mlp(obs_dim + action_dim, 1, hidden, layers)
        self.q2 = mlp(obs_dim + action_dim, 1, hidden, layers)

    def both(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        sa = torch.cat([obs, action], dim=-1)
        return self.q1(sa).squeeze(-1), self.q2(sa).squeeze(-1)

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        return torch.minimum(*self.both(obs, action))


class ValueNet(nn.Module):
    """V(s)."""

    def __init__(self, obs_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.v = mlp(obs_dim, 1, hidden, layers)

    def forward(self, obs: Tensor) -> Tensor:
        return self.v(obs).squeeze(-1)


LOG_STD_MIN, LOG_STD_MAX = -5.0, 0.0  # the head's log-std range: -5 + 2.5 (u + 1), u in [-1, 1]


class ResidualGaussianHead(nn.Module):
    """φ_i: a Gaussian over a_t centred on the diffusion action μ^i_1(S) plus a learned residual.

    u = tanh(MLP([s, μ^i_1])); mean = μ^i_1 + u_mean (mean layer zero-initialised, so the head
    starts exactly at the diffusion action); log_std = -5 + 2.5 (u_std + 1).
    """

    def __init__(self, obs_dim: int, action_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.trunk = mlp(obs_dim + action_dim, hidden, hidden, layers - 1)
        self.trunk.append(nn.ReLU())
        self.mean_layer = nn.Linear(hidden, action_dim)
        self.log_std_layer = nn.Linear(hidden, action_dim)
        nn.init.zeros_(self.mean_layer.weight)
        nn.init.zeros_(self.mean_layer.bias)

    def forward(self, obs: Tensor, base_action: Tensor) -> tuple[Tensor, Tensor]:
        h = self.trunk(torch.cat([obs, base_action], dim=-1))
        mean = base_action + torch.tanh(self.mean_layer(h))
        u_std = torch.tanh(self.log_std_layer(h))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (u_std + 1)
        return mean, log_std

    def distribution(self, obs: Tensor, base_action: Tensor) -> torch.distributions.Independent:
        mean, log_std = self(obs, base_action)
        return torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1)

    @torch.no_grad()
    def reset_std(self, std: float) -> None:
        """Make the std ``std`` in every state (the log-std layer's weights zeroed, its bias set); it stays
        learnable. The mean is untouched."""
        if not math.exp(LOG_STD_MIN) < std < math.exp(LOG_STD_MAX):
            raise ValueError(f"std must be in (e^{LOG_STD_MIN}, e^{LOG_STD_MAX}), got {std}")
        u = (math.log(std) - LOG_STD_MIN) / (0.5 * (LOG_STD_MAX - LOG_STD_MIN)) - 1
        self.log_std_layer.weight.zero_()
        self.log_std_layer.bias.fill_(math.atanh(u))


class GaussianBCPolicy(nn.Module):
    """Uni-O4's behaviour-cloning member: tanh-squashed mean of a_t given the state history.

    Used by ``--policy gaussian-ensemble`` as the base action μ^i_1 under a residual head, so that
    BPPO, AM-Q and selection run unchanged.
    """

    def __init__(self, cond_dim: int, action_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.net = mlp(cond_dim, 2 * action_dim, hidden, layers)
        self.action_dim = action_dim

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """cond (N, C) -> mean (N, d_a) in (-1, 1), log_std (N, d_a)."""
        mean, log_std = self.net(cond).chunk(2, dim=-1)
        return torch.tanh(mean), log_std.clamp(-5.0, 2.0)


class GaussianBCEnsemble(nn.Module):
    """n independent Gaussian BC policies (the Uni-O4 ensemble)."""

    def __init__(self, num_members: int, cond_dim: int, action_dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.members = nn.ModuleList(GaussianBCPolicy(cond_dim, action_dim, hidden, layers)
                                     for _ in range(num_members))
        self.action_dim = action_dim

    def forward(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        """cond (N, C) -> means, log_stds (N, n, d_a)."""
        outs = [m(cond) for m in self.members]
        return torch.stack([o[0] for o in outs], 1), torch.stack([o[1] for o in outs], 1)


# ---------------------------------------------------------------------------------------------
# Dynamics ensemble (SPEC §2): E Gaussian MLPs predicting (Δs, r), learned log-variance bounds
# ---------------------------------------------------------------------------------------------


class EnsembleLinear(nn.Module):
    """E independent linear layers applied in one batched matmul: (E, N, in) -> (E, N, out)."""

    def __init__(self, ensemble: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(ensemble, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(ensemble, 1, out_dim))
        nn.init.trunc_normal_(self.weight, std=1 / (2 * math.sqrt(in_dim)))

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class DynamicsEnsemble(nn.Module):
    """p(Δs, r | s, a) as E Gaussian MLPs (Swish) on inputs z-scored with the model's own scaler."""

    def __init__(self, obs_dim: int, action_dim: int, ensemble: int = 7, hidden: int = 200, layers: int = 4,
                 elites: int = 5):
        super().__init__()
        self.obs_dim, self.action_dim, self.ensemble = obs_dim, action_dim, ensemble
        out = obs_dim + 1
        dims = [obs_dim + action_dim] + [hidden] * layers
        pairs = zip(dims[:-1], dims[1:], strict=True)
        self.layers = nn.ModuleList(EnsembleLinear(ensemble, a, b) for a, b in pairs)
        self.head = EnsembleLinear(ensemble, hidden, 2 * out)
        self.max_logvar = nn.Parameter(torch.full((1, 1, out), 0.5))
        self.min_logvar = nn.Parameter(torch.full((1, 1, out), -10.0))
        self.register_buffer("in_mean", torch.zeros(obs_dim + action_dim))
        self.register_buffer("in_std", torch.ones(obs_dim + action_dim))
        self.register_buffer("out_mean", torch.zeros(out))
        self.register_buffer("out_std", torch.ones(out))
        if not 1 <= elites <= ensemble:
            raise ValueError(f"elites must be in [1, ensemble = {ensemble}], got {elites}")
        self.register_buffer("elites", torch.arange(elites))  # member indices, chosen by hold-out error

    def set_scaler(self, inputs: Tensor, targets: Tensor) -> None:
        self.in_mean.copy_(inputs.mean(0))
        self.in_std.copy_(inputs.std(0) + 1e-6)
        self.out_mean.copy_(targets.mean(0))
        self.out_std.copy_(targets.std(0) + 1e-6)

    def forward(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """obs, action (N, ·) or (E, N, ·) -> normalised-target mean and log-variance (E, N, d_s+1)."""
        x = (torch.cat([obs, action], dim=-1) - self.in_mean) / self.in_std
        if x.dim() == 2:
            x = x.expand(self.ensemble, *x.shape)
        for layer in self.layers:
            x = F.silu(layer(x))
        mean, logvar = self.head(x).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar

    def nll(self, obs: Tensor, action: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
        """Per-member Gaussian NLL of raw targets (Δs, r), (E,) ; inputs (E, N, ·) or (N, ·)."""
        mean, logvar = self(obs, action)
        z = (target - self.out_mean) / self.out_std
        per = ((mean - z) ** 2 * torch.exp(-logvar) + logvar).mean(-1)  # (E, N)
        if weight is None:
            return per.mean(-1)
        return (per * weight).sum(-1) / weight.sum(-1).clamp_min(1e-8)

    def mse(self, obs: Tensor, action: Tensor, target: Tensor) -> Tensor:
        """Per-member mean squared error of the mean in normalised-target units, (E,)."""
        mean, _ = self(obs, action)
        return ((mean - (target - self.out_mean) / self.out_std) ** 2).mean((-1, -2))

    def predict(self, obs: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """Raw-unit mean and variance of (Δs, r) per elite: (n_elite, N, d_s+1) each."""
        mean, logvar = self(obs, action)
        mean, var = mean[self.elites], logvar[self.elites].exp()
        return mean * self.out_std + self.out_mean, var * self.out_std**2


# ---------------------------------------------------------------------------------------------
# The paper's denoiser (``--denoiser unet``): 1-D temporal U-Net with FiLM on the step embedding
# and a small Transformer over state tokens feeding cross-attention at the bottleneck.
# ---------------------------------------------------------------------------------------------


class FiLMConvBlock(nn.Module):
    """Conv1d -> GroupNorm -> Mish, twice, with FiLM (scale, shift) from the step embedding."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int = 8):
        super().__init__()
        self.conv1 = nn.Conv1d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv1d(out_ch, out_ch, 3, padding=1)
        self.norm1 = nn.GroupNorm(min(groups, out_ch), out_ch)
        self.norm2 = nn.GroupNorm(min(groups, out_ch), out_ch)
        self.film = nn.Linear(emb_dim, 2 * out_ch)
        self.skip = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = F.mish(self.norm1(self.conv1(x)))
        scale, shift = self.film(emb).unsqueeze(-1).chunk(2, dim=1)
        h = h * (1 + scale) + shift
        h = F.mish(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class UNetDenoiser(nn.Module):
    """ε_θ(x_k, k, S) as a temporal U-Net over the chunk (N, H, d_a); same forward as the MLP.

    The state history (N, T_o·d_s) is split into T_o tokens, encoded by a Transformer, and read
    by cross-attention at the bottleneck.
    """

    def __init__(self, horizon: int, action_dim: int, cond_dim: int, history: int = 2,
                 channels: tuple[int, ...] = (64, 128), time_dim: int = 32, token_dim: int = 64,
                 heads: int = 4, transformer_layers: int = 1):
        super().__init__()
        if cond_dim % history:
            raise ValueError(f"cond_dim {cond_dim} is not a multiple of the history length {history}")
        self.horizon, self.action_dim, self.cond_dim, self.history = horizon, action_dim, cond_dim, history
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, 4 * time_dim), nn.Mish(),
                                      nn.Linear(4 * time_dim, time_dim))
        self.token_in = nn.Linear(cond_dim // history, token_dim)
        self.token_pos = nn.Parameter(torch.zeros(1, history, token_dim))
        layer = nn.TransformerEncoderLayer(token_dim, heads, 2 * token_dim, dropout=0.0, batch_first=True)
        self.state_encoder = nn.TransformerEncoder(layer, transformer_layers)
        emb = time_dim + token_dim  # FiLM sees the step and the pooled state
        self.down = nn.ModuleList()
        ch = action_dim
        for c in channels:
            self.down.append(FiLMConvBlock(ch, c, emb))
            ch = c
        self.mid = FiLMConvBlock(ch, ch, emb)
        self.cross_q = nn.Linear(ch, token_dim)
        self.cross_attn = nn.MultiheadAttention(token_dim, heads, batch_first=True)
        self.cross_out = nn.Linear(token_dim, ch)
        self.up = nn.ModuleList()
        for c in reversed(channels[:-1]):
            self.up.append(FiLMConvBlock(ch + c, c, emb))
            ch = c
        self.out = nn.Conv1d(ch, action_dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        n = x.shape[0]
        tokens = self.token_in(cond.reshape(n, self.history, -1)) + self.token_pos
        tokens = self.state_encoder(tokens)  # (N, T_o, token_dim)
        temb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(x.dtype))
        emb = torch.cat([temb, tokens.mean(1)], dim=-1)
        h = x.transpose(1, 2)  # (N, d_a, H): convolve over time
        skips = []
        for blk in self.down:
            h = blk(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        q = self.cross_q(h.transpose(1, 2))
        attended, _ = self.cross_attn(q, tokens, tokens, need_weights=False)
        h = h + self.cross_out(attended).transpose(1, 2)
        for blk, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            h = blk(torch.cat([h, skip], dim=1), emb)
        return self.out(h).transpose(1, 2)
