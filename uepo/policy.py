"""The acting bundle that the offline phases produce and online PPO consumes (docs/CONTRACTS.md).

``MultiSeedPolicy`` = frozen state normaliser + diffusion backbone (EMA weights) sampled under n
fixed seeds + one residual Gaussian head per seed. Sub-policy i acts with a_t ~ φ_i(s_t, μ^i_1(S_t)).

μ^i is defined with all n chains denoised together (the adaptive perturbation of one chain
depends on the others), so even when one seed is asked for, all n are sampled and one is kept.

With ``kind="gaussian-ensemble"`` (Uni-O4's recipe) the backbone is n Gaussian BC policies and
μ^i_1 is member i's mean action; everything downstream is the same.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from uepo import ops
from uepo.diffusion import (
    PREDICTION_WRAPPERS,
    DDIMSteps,
    Schedule,
    SeedBank,
    ddpm_step_noise,
    fused_denoiser,
    multiseed_ddpm,
    multiseed_sample,
)
from uepo.nets import GaussianBCEnsemble, ResidualGaussianHead, ResidualMLPDenoiser, UNetDenoiser

ACTION_BOUND = 1.0


def build_backbone(cfg: dict) -> nn.Module:
    """The backbone network described by a policy config dict (see ``MultiSeedPolicy.config``)."""
    cond_dim = cfg["history"] * cfg["obs_dim"]
    if cfg["kind"] == "gaussian-ensemble":
        return GaussianBCEnsemble(cfg["num_seeds"], cond_dim, cfg["action_dim"], cfg["width"],
                                  cfg["num_blocks"])
    if cfg["denoiser"] == "mlp":
        net: nn.Module = ResidualMLPDenoiser(cfg["horizon"], cfg["action_dim"], cond_dim, cfg["width"],
                                             cfg["num_blocks"], cfg["time_dim"])
    elif cfg["denoiser"] == "unet":
        net = UNetDenoiser(cfg["horizon"], cfg["action_dim"], cond_dim, cfg["history"], time_dim=cfg["time_dim"])
    else:
        raise ValueError(f"unknown denoiser {cfg['denoiser']!r}: use 'mlp' or 'unet'")
    prediction = cfg.get("prediction", "eps")  # checkpoints that predate the field predict ε
    if prediction not in ops.PREDICTIONS:
        raise ValueError(f"unknown prediction {prediction!r}: use 'eps', 'x0' or 'v'")
    wrapper = PREDICTION_WRAPPERS.get(prediction)
    return net if wrapper is None else wrapper(net, cfg["diffusion_steps"])


class MultiSeedPolicy(nn.Module):
    """n sub-policies: fixed-seed diffusion chunks μ^i (the proposal) + residual Gaussian heads φ_i."""

    def __init__(self, config: dict, obs_mean: Tensor, obs_std: Tensor, backbone: nn.Module | None = None):
        super().__init__()
        self.config: dict[str, Any] = dict(config)
        c = self.config
        self.kind: str = c["kind"]
        self.obs_dim, self.action_dim = int(c["obs_dim"]), int(c["action_dim"])
        self.history, self.horizon = int(c["history"]), int(c["horizon"])
        self.num_seeds = int(c["num_seeds"])
        self.eta, self.tau = float(c["eta"]), float(c["tau"])
        self.denoiser = backbone if backbone is not None else build_backbone(c)
        self.heads = nn.ModuleList(ResidualGaussianHead(self.obs_dim, self.action_dim, c["head_hidden"],
                                                        c["head_layers"]) for _ in range(self.num_seeds))
        self.register_buffer("obs_mean", obs_mean.detach().clone().float())
        self.register_buffer("obs_std", obs_std.detach().clone().float())
        self.sampler: str = c.get("sampler", "ddim")
        self.steps: DDIMSteps | None = None
        if self.kind == "diffusion":
            self.schedule = Schedule(c["diffusion_steps"])
            # DDPM visits all K timesteps; DDIM the K_s evenly spaced ones
            solver_steps = c["diffusion_steps"] if self.sampler == "ddpm" else c["sampling_steps"]
            self.steps = self.schedule.ddim(solver_steps)
            self.seed_temperature = float(c.get("seed_temperature", 1.0))  # 1.0: checkpoints that predate it
            if self.sampler not in ("ddim", "ddpm"):
                raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {self.sampler!r}")
            self._draw_seeds(c.get("seed_offsets"))

    def _draw_seeds(self, offsets: list[int] | None) -> None:
        """(Re)draw the fixed noises of the sub-policies from base_seed + offsets (default 0 … n − 1)."""
        c, solver_steps = self.config, len(self.steps.timesteps)
        bank = SeedBank.draw(self.num_seeds, solver_steps, self.horizon, self.action_dim, c["base_seed"],
                             temperature=self.seed_temperature, offsets=offsets)
        buffers = {"seed_noise": bank.noise, "seed_perturb": bank.perturb}
        if self.sampler == "ddpm":
            buffers["ddpm_noise"] = ddpm_step_noise(self.num_seeds, solver_steps, self.horizon, self.action_dim,
                                                    c["base_seed"], temperature=self.seed_temperature,
                                                    offsets=offsets)
        for name, value in buffers.items():
            if hasattr(self, name):
                getattr(self, name).copy_(value)
            else:
                self.register_buffer(name, value)
        if offsets is not None:
            c["seed_offsets"] = [int(i) for i in offsets]

    def set_seed_offsets(self, offsets: list[int]) -> None:
        """Sub-policy i becomes the noise drawn from base_seed + offsets[i] (``pretrain.seed_candidates``)."""
        self._draw_seeds(offsets)

    @property
    def seeds(self) -> SeedBank:
        return SeedBank(self.seed_noise, self.seed_perturb, int(self.config["base_seed"]))

    def set_tau(self, tau: float) -> None:
        self.tau = float(tau)
        self.config["tau"] = float(tau)

    # -- inputs ---------------------------------------------------------------------------------
    def normalize(self, obs: Tensor) -> Tensor:
        """Raw (..., d_s) -> z-scored with the frozen dataset statistics."""
        return (obs.to(self.obs_mean.dtype) - self.obs_mean) / self.obs_std

    def cond(self, obs_history: Tensor) -> Tensor:
        """Raw (B, T_o, d_s) -> normalised and flattened (B, T_o·d_s)."""
        if obs_history.dim() != 3 or obs_history.shape[1:] != (self.history, self.obs_dim):
            raise ValueError(f"obs_history must have shape (B, {self.history}, {self.obs_dim}), "
                             f"got {tuple(obs_history.shape)}")
        return self.normalize(obs_history).reshape(obs_history.shape[0], -1)

    # -- backbone -------------------------------------------------------------------------------
    @torch.no_grad()
    def base_chunks_from_cond(self, cond: Tensor, seed_indices: list[int] | None = None) -> Tensor:
        """μ^i from already-normalised conditions (B, C) -> (B, n_sel, H, d_a) (H = 1 for BC members)."""
        if self.kind == "gaussian-ensemble":
            chunks = self.denoiser(cond)[0].unsqueeze(2)
        elif self.sampler == "ddpm":
            chunks = multiseed_ddpm(self.denoiser, cond, self.schedule, self.seeds, self.ddpm_noise, self.eta,
                                    self.tau)
        else:
            chunks, _ = multiseed_sample(self.denoiser, cond, self.steps, self.seeds, self.eta, self.tau)
        return chunks if seed_indices is None else chunks[:, seed_indices]

    def base_sampler(self, seed_index: int) -> Callable[[Tensor], Tensor]:
        """cond (B, C) -> μ^i_1 (B, d_a), no autograd: ``base_chunks_from_cond`` for acting, one env step at a time.

        With the residual MLP on the compiled backend it calls the fused op with its constant
        arguments built once (the same call, the same numbers: rebuilding the weight list, the
        timesteps and the backend check cost ~5 % of the kernel at B = 1). Valid while τ, the
        backend and the parameter objects stay (in-place weight updates are seen); build it again
        after ``set_tau``.
        """
        args = self.sampler_op_args()
        if args is None:
            return lambda cond: self.base_chunks_from_cond(cond)[:, seed_index, 0]
        op, prediction = torch.ops.uepo.multiseed_sample.default, self.prediction
        return lambda cond: op(cond, *args, False, prediction)[0][:, seed_index, 0]

    @property
    def prediction(self) -> str:
        """What the denoiser outputs (eps, x0 or v): the fused sampler's ``prediction`` argument."""
        return getattr(self.denoiser, "prediction", "eps")

    def sampler_op_args(self) -> tuple | None:
        """The compiled sampler's arguments after ``cond`` (noise … eps; ``prediction`` follows return_div),
        built once; None where the sampler does not run as the fused op (Gaussian members, DDPM, the U-Net,
        the reference backend)."""
        fused = fused_denoiser(self.denoiser) if self.kind == "diffusion" else None
        if fused is None or self.sampler != "ddim" or ops.backend(self.seed_noise.device) == "reference":
            return None
        return (self.seed_noise, self.seed_perturb, fused[0].kernel_weights(),
                [int(t) for t in self.steps.timesteps], [float(a) for a in self.steps.alpha_bars],
                self.horizon, self.eta, self.tau, ops.DIVERGENCE_EPS)

    def base_chunks(self, obs_history: Tensor, seed_indices: list[int] | None = None) -> Tensor:
        """μ^i (B, n_sel, H, d_a) through uepo.diffusion.multiseed_sample (fused op)."""
        return self.base_chunks_from_cond(self.cond(obs_history), seed_indices)

    def base_action(self, obs_history: Tensor, seed_index: int) -> Tensor:
        """μ^i_1, the first action of sub-policy i's chunk, (B, d_a)."""
        return self.base_chunks(obs_history, [seed_index])[:, 0, 0]

    # -- heads ----------------------------------------------------------------------------------
    def distribution(self, obs_history: Tensor, seed_index: int) -> torch.distributions.Distribution:
        """π^i(a_t | S_t): the residual Gaussian head around μ^i_1 (the backbone gets no gradient)."""
        base = self.base_action(obs_history, seed_index)
        return self.heads[seed_index].distribution(self.normalize(obs_history[:, -1]), base)

    def act(self, obs_history: Tensor, seed_index: int, deterministic: bool = True) -> Tensor:
        """(B, d_a) actions clipped to the bounds; deterministic = the head's mean."""
        with torch.no_grad():
            dist = self.distribution(obs_history, seed_index)
            action = dist.mean if deterministic else dist.sample()
        return action.clamp(-ACTION_BOUND, ACTION_BOUND)

    # -- persistence ----------------------------------------------------------------------------
    def state(self) -> dict:
        """Config + weights: everything ``from_state`` needs."""
        weights = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        return {"config": dict(self.config), "state_dict": weights}

    @classmethod
    def from_state(cls, state: dict) -> MultiSeedPolicy:
        sd = state["state_dict"]
        policy = cls(state["config"], sd["obs_mean"], sd["obs_std"])
        policy.load_state_dict(sd)
        return policy

    def save(self, path: str | Path) -> None:
        from uepo.runs import atomic_torch_save

        atomic_torch_save(self.state(), Path(path))

    @classmethod
    def load(cls, path: str | Path) -> MultiSeedPolicy:
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "policy" in state and "config" not in state:  # an offline.pt bundle
            state = state["policy"]
        return cls.from_state(state)


def policy_config(kind: str, obs_dim: int, action_dim: int, history: int, horizon: int, num_seeds: int,
                  denoiser: str = "mlp", width: int = 256, num_blocks: int = 3, time_dim: int = 32,
                  diffusion_steps: int = 100, sampling_steps: int = 10, base_seed: int = 0,
                  eta: float = 0.1, tau: float = 0.0, head_hidden: int = 256, head_layers: int = 3,
                  sampler: str = "ddim", seed_temperature: float = 1.0, prediction: str = "eps") -> dict:
    """The config dict a ``MultiSeedPolicy`` is built from (saved inside every checkpoint)."""
    if kind not in ("diffusion", "gaussian-ensemble"):
        raise ValueError(f"policy kind must be 'diffusion' or 'gaussian-ensemble', got {kind!r}")
    return dict(kind=kind, obs_dim=obs_dim, action_dim=action_dim, history=history,
                horizon=horizon if kind == "diffusion" else 1, num_seeds=num_seeds, denoiser=denoiser,
                width=width, num_blocks=num_blocks, time_dim=time_dim, diffusion_steps=diffusion_steps,
                sampling_steps=sampling_steps, base_seed=base_seed, eta=eta, tau=tau,
                head_hidden=head_hidden, head_layers=head_layers, sampler=sampler,
                seed_temperature=seed_temperature, prediction=prediction)
