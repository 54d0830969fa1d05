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

from uepo import ops
from uepo.config import Config
from uepo.diffusion import Schedule, SeedBank
from uepo.phases import PHASE_SEED_OFFSETS, BatchSampler, PhaseContext, restore, sample_indices, snapshot
from uepo.policy import MultiSeedPolicy, build_backbone, policy_config
from uepo.runs import check_finite, seed_everything

PHASE = "pretrain"
RUNNING_TAU_DECAY = 0.99  # smoothing of the running τ used by the chain during training


@dataclass
class Pretrained:
    policy: MultiSeedPolicy  # EMA backbone, calibrated τ, untrained heads
    metrics: dict


def base_seed_for(cfg: Config) -> int:
    return cfg.pretrain.base_seed if cfg.pretrain.base_seed >= 0 else 1000 * cfg.seed


def make_policy_config(cfg: Config, obs_dim: int, action_dim: int, tau: float = 0.0) -> dict:
    p = cfg.pretrain
    return policy_config(
        "diffusion" if cfg.policy == "diffusion" else "gaussian-ensemble", obs_dim, action_dim,
        cfg.data.history, cfg.data.horizon, p.num_seeds, p.denoiser, p.width, p.num_blocks, p.time_dim,
        p.diffusion_steps, p.sampling_steps, base_seed_for(cfg), p.eta if p.divergence else 0.0,
        tau if p.divergence else 0.0, sampler=p.sampler, seed_temperature=p.seed_temperature,
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


def masked_eps_loss(eps: Tensor, eps_hat: Tensor, mask: Tensor, first_action_weight: float = 1.0) -> Tensor:
    """Weighted mean of ‖ε − ε̂‖² over the valid chunk steps (B, H, d_a); step 0, the action that is
    executed, weighs ``first_action_weight`` times each later step."""
    m = mask.to(eps.dtype)
    if first_action_weight != 1.0:
        m = m.clone()
        m[:, 0] *= first_action_weight
    m = m[..., None]
    return ((eps - eps_hat) ** 2 * m).sum() / (m.sum() * eps.shape[-1]).clamp_min(1e-12)


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


def pretrain(ctx: PhaseContext) -> Pretrained:
    cfg, p, data, run = ctx.cfg, ctx.cfg.pretrain, ctx.data, ctx.run
    pcfg = make_policy_config(cfg, data.obs_dim, data.action_dim)
    done = run.load_checkpoint(PHASE)
    if done is not None:
        return Pretrained(MultiSeedPolicy.from_state(done["policy"]), done["metrics"])

    seed_everything(cfg.seed * 1000 + PHASE_SEED_OFFSETS[PHASE])
    net = build_backbone(pcfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(p.warmup_steps, p.steps))
    gen = ctx.generator(PHASE)
    start, running_tau, last_kl = 0, 0.0, float("nan")
    progress = run.load_checkpoint(f"{PHASE}_progress")
    if progress is not None:
        restore(progress, gen, net=net, ema=ema, optimizer=opt, scheduler=sched)
        start, running_tau, last_kl = progress["step"], progress["running_tau"], progress["last_kl"]
    run.drop_metrics(PHASE, start)

    diffusion = cfg.policy == "diffusion"
    schedule = Schedule(p.diffusion_steps)
    chain = schedule.ddim(p.kl_chain_steps)
    chain_seeds = SeedBank.draw(p.num_seeds, p.kl_chain_steps, cfg.data.horizon, data.action_dim,
                                base_seed_for(cfg), temperature=p.seed_temperature)
    sample_batch = BatchSampler(data, p.start_fraction, p.start_steps)
    H, T_o = cfg.data.horizon, cfg.data.history
    use_kl = p.seq_kl and p.alpha > 0 and p.num_seeds > 1

    def save_progress(step: int) -> None:
        run.save_checkpoint(f"{PHASE}_progress", {
            **snapshot(gen, net=net, ema=ema, optimizer=opt, scheduler=sched),
            "step": step, "running_tau": running_tau, "last_kl": last_kl,
        })

    def chain_eps(x: Tensor, t: int, c: Tensor) -> Tensor:
        return net(x, torch.full((x.shape[0],), t, dtype=torch.long), c)

    label = "B diffusion" if diffusion else "B Gaussian BC ensemble"
    bar = ctx.bar(label, p.steps, start)
    for step in range(start, p.steps):
        idx = sample_batch(p.batch_size, gen)
        cond = data.cond(idx, T_o)
        metrics: dict[str, float] = {}
        if diffusion:
            chunk, mask = data.chunks(idx, H)
            k = torch.randint(0, p.diffusion_steps, (idx.shape[0],), generator=gen)
            eps = torch.randn(chunk.shape, generator=gen)
            eps_hat = net(schedule.add_noise(chunk, eps, k), k, cond)
            loss = masked_eps_loss(eps, eps_hat, mask, p.first_action_weight)
            metrics["eps_loss"] = loss.item()
        else:  # Uni-O4: Gaussian NLL of a_t for every member
            means, log_std = net(cond)
            a = data.actions[idx][:, None]
            loss = (((a - means) / log_std.exp()) ** 2 / 2 + log_std).sum(-1).mean()
            metrics["bc_nll"] = loss.item()

        if use_kl and step % p.kl_every == 0:
            sub = idx[: p.kl_batch]
            if diffusion:
                eta = p.eta if (p.divergence and running_tau > 0) else 0.0
                mus, divs = ops.multiseed_ddim(
                    chain_eps, cond[: p.kl_batch], chain_seeds.noise, chain_seeds.perturb, chain.timesteps,
                    chain.alpha_bars, eta, running_tau, return_div=True, divergence_fn=ops.divergence)
                sub_chunk, sub_mask = data.chunks(sub, H)
                # running τ: the target quantile of the final-step nearest-competitor divergence
                q = float(torch.quantile(divs[..., -1].detach().flatten(), p.tau_quantile))
                decay = RUNNING_TAU_DECAY if running_tau > 0 else 0.0
                running_tau = decay * running_tau + (1 - decay) * q
            else:
                mus, sub_mask = means[: p.kl_batch][:, :, None], None
                sub_chunk = data.actions[sub][:, None]
            r = sequence_kl(mus, sub_mask, p.sigma_seq, sub_chunk if p.seq_kl_form == "data" else None)
            kl_term = r.clamp(max=p.kappa).mean()
            loss = loss - p.alpha * kl_term
            last_kl = kl_term.item()

        opt.zero_grad(set_to_none=True)
        loss.backward()
        check_finite(loss, PHASE, step, "L_B")
        if p.grad_clip > 0:
            nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
        opt.step()
        sched.step()
        _ema_update(ema, net, p.ema)
        bar.update(1)
        if (step + 1) % p.log_every == 0 or step + 1 == p.steps:
            metrics.update(loss=loss.item(), lr=sched.get_last_lr()[0], running_tau=running_tau)
            if use_kl:
                metrics["seq_kl"] = last_kl  # mean min(R_i, κ) of the latest KL update
            run.log(PHASE, step + 1, **metrics)
            shown = ("eps_loss", "bc_nll", "seq_kl")
            bar.set_postfix({k: f"{v:.3g}" for k, v in metrics.items() if k in shown})
        if (step + 1) % p.checkpoint_every == 0 and step + 1 < p.steps:
            save_progress(step + 1)
    bar.close()

    policy = MultiSeedPolicy(pcfg, data.obs_mean, data.obs_std, backbone=ema.eval())
    result: dict[str, float] = {}
    if diffusion:
        states = sample_indices(data.size, min(p.tau_states, data.size), gen)
        tau, mean_div = calibrate_tau(policy, data.cond(states, T_o), p.tau_quantile)
        result.update(tau_calibrated=tau, mean_nearest_divergence=mean_div)
        policy.set_tau(tau if p.divergence else 0.0)
        result["tau"] = policy.tau
        result["sub_policy_divergence"] = mean_nearest_divergence(policy, data.cond(states, T_o))
        run.log(PHASE, p.steps, **result)
    run.save_checkpoint(PHASE, {"policy": policy.state(), "metrics": result, "net": net.state_dict()})
    return Pretrained(policy, result)
