"""Phase B: multi-seed diffusion pretraining (SPEC §3B), or Uni-O4's Gaussian BC ensemble.

L_B = E‖M ⊙ (ε − ε_θ(√ᾱ_k A + √(1−ᾱ_k) ε, k, S))‖² − α · (1/n) Σ_i min(R_i(S), κ)

The KL term's μ^i come from a short differentiable DDIM chain (``kl_chain_steps`` steps) of the
online network on a sub-batch, every ``kl_every`` updates; its perturbation uses a running τ
(the final τ is only known after training) and σ_i carries no gradient. After training, τ is
calibrated on the EMA network as the ``tau_quantile`` of the nearest-competitor divergence.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from uepo import ops, seeds
from uepo.config import Config
from uepo.data import OfflineData
from uepo.diffusion import Schedule, SeedBank, multiseed_sample, training_pair
from uepo.phases import BatchSampler, PhaseContext, sample_indices
from uepo.phases.runner import Trainer, train
from uepo.policy import MultiSeedPolicy, build_backbone, policy_config
from uepo.runs import seed_everything
from uepo.seeds import phase_seed, sub_policy_base_seed

PHASE = "pretrain"
RUNNING_TAU_DECAY = 0.99  # smoothing of the running τ used by the chain during training


@dataclass
class Pretrained:
    policy: MultiSeedPolicy  # EMA backbone, calibrated τ, untrained heads
    metrics: dict


def base_seed_for(cfg: Config) -> int:
    return sub_policy_base_seed(cfg.seed, cfg.pretrain.base_seed)


def make_policy_config(cfg: Config, obs_dim: int, action_dim: int, tau: float = 0.0) -> dict:
    p = cfg.pretrain
    return policy_config(
        "diffusion" if cfg.policy == "diffusion" else "gaussian-ensemble", obs_dim, action_dim,
        cfg.data.history, cfg.data.horizon, p.num_seeds, p.denoiser, p.width, p.num_blocks, p.time_dim,
        p.diffusion_steps, p.sampling_steps, base_seed_for(cfg), p.eta if p.divergence else 0.0,
        tau if p.divergence else 0.0, sampler=p.sampler, seed_temperature=p.seed_temperature,
        prediction=p.prediction,
    )


def sequence_kl(chunks: Tensor, mask: Tensor | None, sigma_seq: float, data: Tensor | None = None) -> Tensor:
    """R_i = min_{j≠i} Σ_h M_h ‖μ^i_h − μ^j_h‖² / (2 σ² Σ_h M_h d_a): (B, n, H, d_a) -> (B, n).

    The KL between isotropic Gaussians N(μ^i, σ²I) and N(μ^j, σ²I) over the unmasked steps,
    per action dimension. With ``data`` (B, H, d_a) it is the literal "data" form instead (the
    ablation ``seq_kl_form=data``): min_j [log p_i(A) − log p_j(A)] at the dataset chunk A, which
    pulls μ^i onto A and so collapses the seeds onto the conditional mean.
    """
    B, n, H, D = chunks.shape
    m = chunks.new_ones(B, H) if mask is None else mask.to(chunks.dtype)
    norm = 2 * sigma_seq**2 * m.sum(-1).clamp_min(1)[:, None, None] * D
    if data is not None:
        sq_to_data = (((chunks - data[:, None]) ** 2).sum(-1) * m[:, None]).sum(-1)  # (B, n)
        log_ratio = (sq_to_data[:, None, :] - sq_to_data[:, :, None]) / norm  # [b, i, j] = log p_i − log p_j
        return ops.nearest_competitor(log_ratio)
    sq = ((chunks[:, :, None] - chunks[:, None, :]) ** 2).sum(-1)  # (B, n, n, H)
    return ops.nearest_competitor((sq * m[:, None, None]).sum(-1) / norm)


def lr_lambda(warmup: int, total: int):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def masked_mse(target: Tensor, prediction: Tensor, mask: Tensor,
               first_action_weight: float | Tensor = 1.0) -> Tensor:
    """Weighted mean of ‖target − prediction‖² (ε, x_0 or v) over the valid chunk steps (B, H, d_a);
    step 0, the action that is executed, weighs ``first_action_weight`` (a number, or one per row: (B,))
    times each later step."""
    m = mask.to(target.dtype)
    if isinstance(first_action_weight, Tensor) or first_action_weight != 1.0:
        m = m.clone()
        m[:, 0] *= first_action_weight
    m = m[..., None]
    return ((target - prediction) ** 2 * m).sum() / (m.sum() * target.shape[-1]).clamp_min(1e-12)


@torch.no_grad()
def calibrate_tau(policy: MultiSeedPolicy, cond: Tensor, quantile: float,
                  batch: int = 1024) -> tuple[float, float]:
    """τ = quantile of min_{j≠i} div of the unperturbed μ^i over the given states; also the mean."""
    saved_tau = policy.tau
    policy.tau = 0.0
    d = []
    for s in range(0, cond.shape[0], batch):
        chunks = policy.base_chunks_from_cond(cond[s:s + batch])
        d.append(ops.nearest_competitor(ops.divergence(chunks.double())).float())
    policy.tau = saved_tau
    flat = torch.cat(d).flatten()
    return float(torch.quantile(flat, quantile)), float(flat.mean())


@torch.no_grad()
def mean_nearest_divergence(policy: MultiSeedPolicy, cond: Tensor, batch: int = 1024) -> float:
    """Mean over states and seeds of min_{j≠i} div(μ^i, μ^j): how distinct the sub-policies are."""
    d = [ops.nearest_competitor(ops.divergence(policy.base_chunks_from_cond(cond[s:s + batch]).double()))
         for s in range(0, cond.shape[0], batch)]
    return float(torch.cat(d).mean())


def _ema_update(ema: nn.Module, net: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
            pe.lerp_(p, 1 - decay)


class PretrainTrainer(Trainer):
    """Phase B as the loop sees it: one step = one update of L_B (with the KL term every kl_every)."""

    shown = ("eps_loss", "x0_loss", "v_loss", "bc_nll", "seq_kl")

    def __init__(self, ctx: PhaseContext, pcfg: dict):
        cfg, p, data = ctx.cfg, ctx.cfg.pretrain, ctx.data
        self.cfg, self.p, self.data, self.device = cfg, p, data, ctx.device
        self.randn, self.randint, self.world = ctx.randn, ctx.randint, ctx.world
        self.diffusion = cfg.policy == "diffusion"
        self.phase, self.checkpoint = PHASE, f"{PHASE}_progress"
        self.label = "B diffusion" if self.diffusion else "B Gaussian BC ensemble"
        self.total, self.log_every, self.checkpoint_every = p.steps, p.log_every, p.checkpoint_every
        self.net = build_backbone(pcfg).to(ctx.device)
        self.ema = copy.deepcopy(self.net).requires_grad_(False)
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(p.warmup_steps, p.steps))
        self.generator = ctx.generator(PHASE)
        self.running_tau, self.last_kl = 0.0, float("nan")
        self.schedule = Schedule(p.diffusion_steps)
        self.chain = self.schedule.ddim(p.kl_chain_steps)
        self.chain_seeds = SeedBank.draw(p.num_seeds, p.kl_chain_steps, cfg.data.horizon, data.action_dim,
                                         base_seed_for(cfg), temperature=p.seed_temperature, device=ctx.device)
        self.sample_batch = BatchSampler(data, p.start_fraction, p.start_steps, p.start_floor)
        self.use_kl = p.seq_kl and p.alpha > 0 and p.num_seeds > 1
        self.row: dict[str, float] = {}

    def step(self, step: int) -> dict[str, Tensor]:
        p = self.p
        batch = self.sample_batch(p.batch_size, self.generator)  # the global batch; this rank's shard below
        if self.diffusion:
            loss, means = self._denoiser_loss(batch)
        else:
            loss, means = self._bc_loss(self.world.shard(batch))
        if self.use_kl and step % p.kl_every == 0:
            kl_term = self._sequence_kl(self.world.shard(batch[: p.kl_batch]), means)
            loss = loss - p.alpha * kl_term
            self.last_kl = kl_term.item()
        self._update(loss)
        return {"L_B": loss.detach()}

    def _denoiser_loss(self, batch: Tensor) -> tuple[Tensor, None]:
        """The masked loss of the denoiser's prediction (ε, x_0 or v) on dataset chunks at random diffusion
        steps (noise drawn for the global batch, so the ranks together draw what one process does)."""
        shard, H = self.world.shard, self.cfg.data.horizon
        k = self.randint(self.p.diffusion_steps, (batch.shape[0],), self.generator)
        eps = self.randn((batch.shape[0], H, self.data.action_dim), self.generator)
        idx, k, eps = shard(batch), shard(k), shard(eps)
        chunk, mask = self.data.chunks(idx, H)
        x_k, cond = self.schedule.add_noise(chunk, eps, k), self.data.cond(idx, self.cfg.data.history)
        prediction, target = training_pair(self.net, x_k, k, cond, chunk, eps)  # (ε̂, ε), (x̂_0, x_0) or (v̂, v)
        loss = masked_mse(target, prediction, mask, self._executed_action_weight(batch.shape[0]))
        self.row = {f"{self.p.prediction}_loss": loss.item()}
        return loss, None

    def _executed_action_weight(self, batch: int) -> float | Tensor:
        """first_action_weight, times start_action_weight on the batch's first rows (those drawn from
        episodes' starts): one number where every row weighs alike, else this rank's rows' (B,)."""
        p, k = self.p, self.sample_batch.extra_rows(batch)
        if p.start_action_weight == 1.0 or k == 0:
            return p.first_action_weight
        w = torch.full((batch,), p.first_action_weight, device=self.device)
        w[:k] *= p.start_action_weight
        return self.world.shard(w)

    def _bc_loss(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Uni-O4: the Gaussian NLL of a_t under every member."""
        means, log_std = self.net(self.data.cond(idx, self.cfg.data.history))
        a = self.data.actions[idx][:, None]
        loss = (((a - means) / log_std.exp()) ** 2 / 2 + log_std).sum(-1).mean()
        self.row = {"bc_nll": loss.item()}
        return loss, means

    def _sequence_kl(self, sub: Tensor, means: Tensor | None) -> Tensor:
        """mean min(R_i, κ) on a sub-batch: μ^i from the differentiable chain (or the BC means)."""
        p = self.p
        if self.diffusion:
            eta = p.eta if (p.divergence and self.running_tau > 0) else 0.0
            mus, divs = ops.multiseed_ddim(
                self._chain_eps, self.data.cond(sub, self.cfg.data.history), self.chain_seeds.noise,
                self.chain_seeds.perturb, self.chain.timesteps, self.chain.alpha_bars, eta, self.running_tau,
                return_div=True, divergence_fn=ops.divergence)
            sub_chunk, sub_mask = self.data.chunks(sub, self.cfg.data.horizon)
            # running τ: the target quantile of the final-step nearest-competitor divergence (all ranks' states)
            last = torch.cat(self.world.gather_objects(divs[..., -1].detach().flatten().cpu()))
            q = float(torch.quantile(last, p.tau_quantile))
            decay = RUNNING_TAU_DECAY if self.running_tau > 0 else 0.0
            self.running_tau = decay * self.running_tau + (1 - decay) * q
        else:
            mus, sub_mask = means[: sub.shape[0]][:, :, None], None
            sub_chunk = self.data.actions[sub][:, None]
        r = sequence_kl(mus, sub_mask, p.sigma_seq, sub_chunk if p.seq_kl_form == "data" else None)
        return r.clamp(max=p.kappa).mean()

    def _chain_eps(self, x: Tensor, t: int, c: Tensor) -> Tensor:
        return self.net(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), c)

    def parallel_modules(self) -> tuple[nn.Module, ...]:
        return (self.net,)

    def _update(self, loss: Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.p.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.net.parameters(), self.p.grad_clip)
        self.opt.step()
        self.sched.step()
        _ema_update(self.ema, self.net, self.p.ema)

    def metrics(self, losses: dict[str, Tensor]) -> dict[str, float]:
        row = dict(self.row, loss=losses["L_B"].item(), lr=self.sched.get_last_lr()[0],
                   running_tau=self.running_tau)
        if self.use_kl:
            row["seq_kl"] = self.last_kl  # mean min(R_i, κ) of the latest KL update
        return row

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict(), "ema": self.ema.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "running_tau": self.running_tau, "last_kl": self.last_kl}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.running_tau, self.last_kl = state["running_tau"], state["last_kl"]


def pretrain(ctx: PhaseContext) -> Pretrained:
    cfg, p, data, run = ctx.cfg, ctx.cfg.pretrain, ctx.data, ctx.run
    pcfg = make_policy_config(cfg, data.obs_dim, data.action_dim)
    done = run.load_checkpoint(PHASE)
    if done is not None:
        return Pretrained(MultiSeedPolicy.from_state(done["policy"]).to(ctx.device), done["metrics"])

    seed_everything(phase_seed(cfg.seed, PHASE))
    trainer = PretrainTrainer(ctx, pcfg)
    train(ctx, trainer)

    policy = MultiSeedPolicy(pcfg, data.obs_mean, data.obs_std, backbone=trainer.ema.eval()).to(ctx.device)
    # how rare episodes' starts are here, and how many rows per batch the start options drew (either kind)
    result: dict = {"start_natural_share": trainer.sample_batch.natural_share,
                    "start_rows_per_batch": float(trainer.sample_batch.extra_rows(p.batch_size))}
    if trainer.diffusion:
        # with screening the states come from a stream of their own, so the screen reproduces from pretrain.pt
        generator = torch.Generator().manual_seed(seeds.screen_seed(cfg.seed)) if p.seed_candidates else \
            trainer.generator
        result.update(finish_sub_policies(policy, data, cfg, generator))
        run.log(PHASE, p.steps, **{k: v for k, v in result.items() if isinstance(v, float)})
    run.save_checkpoint(PHASE, {"policy": policy.state(), "metrics": result, "net": trainer.net.state_dict()})
    return Pretrained(policy, result)


def finish_sub_policies(policy: MultiSeedPolicy, data: OfflineData, cfg: Config, generator: torch.Generator) -> dict:
    """After training: screen the seed candidates (``seed_candidates``), then calibrate τ on the same states."""
    p = cfg.pretrain
    states = sample_indices(data.size, min(p.tau_states, data.size), generator)
    cond = data.cond(states, cfg.data.history)
    result: dict = {}
    if p.seed_candidates:
        result["seed_screen"] = screen_seeds(policy, cond, data.actions[states], p.seed_candidates)
    tau, mean_div = calibrate_tau(policy, cond, p.tau_quantile)
    result.update(tau_calibrated=tau, mean_nearest_divergence=mean_div)
    policy.set_tau(tau if p.divergence else 0.0)
    result["tau"] = policy.tau
    result["sub_policy_divergence"] = mean_nearest_divergence(policy, cond)
    return result


@torch.no_grad()
def screen_seeds(policy: MultiSeedPolicy, cond: Tensor, actions: Tensor, candidates: int, batch: int = 512) -> dict:
    """Keep the n of ``candidates`` initial noises whose unperturbed first actions μ^j_1 are nearest the data's
    actions (MSE over ``cond``'s states); sub-policy i becomes the i-th kept, in candidate order.

    A fixed draw is applied at every state, and some draws imitate far worse than others (RESULTS 0e: over
    12 dataset-seeds the 4 of 16 with the lowest MSE scored +1.0 above the 16's mean, above it on 9).
    """
    bank = SeedBank.draw(candidates, len(policy.steps.timesteps), policy.horizon, policy.action_dim,
                         int(policy.config["base_seed"]), cond.dtype, cond.device, policy.seed_temperature)
    sq = torch.zeros(candidates, dtype=torch.float64, device=cond.device)
    for s in range(0, cond.shape[0], batch):
        chunks, _ = multiseed_sample(policy.denoiser, cond[s:s + batch], policy.steps, bank, eta=0.0, tau=0.0)
        sq += ((chunks[:, :, 0] - actions[s:s + batch, None]) ** 2).double().sum((0, 2))
    mse = sq / (cond.shape[0] * policy.action_dim)
    kept = sorted(mse.argsort()[:policy.num_seeds].tolist())
    policy.set_seed_offsets(kept)
    return {"candidates": candidates, "kept": kept, "first_action_mse": mse.tolist()}
