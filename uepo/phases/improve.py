"""Phase D: offline improvement and selection (SPEC §3D), Uni-O4's machinery on the sub-policies.

1. Cache μ^i_1 for every dataset state (the backbone is frozen from here on).
2. Warm-start each head's log-std by the NLL of dataset actions around μ^i_1 (the mean layer stays
   zero, so the head's mean is still exactly μ^i_1).
3. BPPO per sub-policy: a ~ π^i_old, Â = norm(Q_τ(s,a) − V_τ(s)), clipped ratio objective with a
   decaying clip, linear LR decay, grad-clip. Every ``ope_every`` steps AM-Q scores the
   deterministic policy in T̂; an improvement is accepted (π^i_old ← π^i), otherwise π^i keeps
   optimising against the old policy.
4. Select i* = argmax Ĵ^i, purely offline.

AM-Q rolls a policy from fixed dataset states in T̂ with common random numbers (the same dynamics
noise for every policy and evaluation), so differences between scores come from the policies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from uepo.phases import PHASE_SEED_OFFSETS, PhaseContext, sample_indices
from uepo.phases.critics import Critics
from uepo.phases.dynamics import ADROIT, Dynamics
from uepo.policy import MultiSeedPolicy
from uepo.runs import capture_rng, check_finite, restore_rng, seed_everything

PHASE = "improve"
AMQ_NOISE_SEED = 12345  # common random numbers of every AM-Q rollout
STD_WARMUP_LR = 1e-3

ActFn = Callable[[Tensor], Tensor]  # raw histories (B, T_o, d_s) -> actions (B, d_a)


@dataclass
class Improved:
    policy: MultiSeedPolicy  # heads = the accepted (best AM-Q) heads
    selected: int
    amq_raw: list[float]  # Ĵ of each raw μ^i (heads at initialisation)
    amq_best: list[float]  # Ĵ of each accepted sub-policy


@torch.no_grad()
def am_q(act: ActFn, dynamics: Dynamics, critics: Critics, start_histories: Tensor, horizon: int,
         normalize: Callable[[Tensor], Tensor]) -> float:
    """Mean Q_τ(s, a) over the pairs visited by ``act`` rolled in T̂ for ``horizon`` steps.

    As in Uni-O4, the mean runs over all start states × ``horizon`` steps, a step after a predicted
    termination counting 0, so a policy that falls early scores lower than one that keeps going.
    """
    gen = torch.Generator().manual_seed(AMQ_NOISE_SEED)
    hist = start_histories.clone()
    alive = torch.ones(hist.shape[0], dtype=torch.bool)
    total = 0.0
    for _ in range(horizon):
        obs = hist[:, -1]
        action = act(hist)
        q = critics.q_value(normalize(obs), action)
        total += float(q[alive].sum())
        nxt, _, done = dynamics.step(obs, action, gen)
        alive = alive & ~done
        if not alive.any():
            break
        nxt = torch.where(alive[:, None], nxt, obs)  # dead rows stay put (finite inputs)
        hist = torch.cat([hist[:, 1:], nxt[:, None]], dim=1)
    return total / (hist.shape[0] * horizon)


def head_act_fn(policy: MultiSeedPolicy, head: nn.Module, index: int) -> ActFn:
    """Deterministic action of sub-policy ``index`` with a given head: mean of φ(s, μ^i_1(S))."""
    def act(hist: Tensor) -> Tensor:
        base = policy.base_chunks_from_cond(policy.cond(hist))[:, index, 0]
        mean, _ = head(policy.normalize(hist[:, -1]), base)
        return mean.clamp(-1, 1)
    return act


def raw_act_fn(policy: MultiSeedPolicy, index: int) -> ActFn:
    """The raw sub-policy μ^i_1 (no head)."""
    def act(hist: Tensor) -> Tensor:
        return policy.base_chunks_from_cond(policy.cond(hist))[:, index, 0]
    return act


@torch.no_grad()
def cache_base_actions(policy: MultiSeedPolicy, cond: Tensor, batch: int = 1024) -> Tensor:
    """μ^i_1 for every row of ``cond``: (N, n, d_a)."""
    return torch.cat([policy.base_chunks_from_cond(cond[s:s + batch])[:, :, 0]
                      for s in range(0, cond.shape[0], batch)])


def warm_start_std(head: nn.Module, obs_n: Tensor, base: Tensor, actions: Tensor, steps: int, batch: int,
                   gen: torch.Generator) -> float:
    """Fit the head's log-std (trunk + log-std layer; the mean layer stays zero) by NLL of dataset actions."""
    params = [p for n, p in head.named_parameters() if not n.startswith("mean_layer")]
    opt = torch.optim.Adam(params, lr=STD_WARMUP_LR)
    nll = torch.tensor(0.0)
    for _ in range(steps):
        idx = sample_indices(obs_n.shape[0], batch, gen)
        nll = -head.distribution(obs_n[idx], base[idx]).log_prob(actions[idx]).mean()
        opt.zero_grad(set_to_none=True)
        nll.backward()
        opt.step()
    return nll.item()


def improve(ctx: PhaseContext, pretrained: MultiSeedPolicy, critics: Critics, dynamics: Dynamics) -> Improved:
    cfg, data, run = ctx.cfg.improve, ctx.data, ctx.run
    policy = copy.deepcopy(pretrained)
    n = policy.num_seeds
    done = run.load_checkpoint(PHASE)
    if done is not None:
        policy = MultiSeedPolicy.from_state(done["policy"])
        return Improved(policy, done["selected"], done["amq_raw"], done["amq_best"])

    seed_everything(ctx.cfg.seed * 1000 + PHASE_SEED_OFFSETS[PHASE])
    gen = ctx.generator(PHASE)
    horizon = cfg.ope_horizon or (20 if data.robot in ADROIT else 200)
    obs_n = data.normalize(data.obs)
    for p in policy.denoiser.parameters():
        p.requires_grad_(False)

    cached = run.load_checkpoint(f"{PHASE}_cache")
    if cached is None:
        run.drop_metrics(PHASE)
        base_all = cache_base_actions(policy, data.cond(torch.arange(data.size), policy.history))
        ope_idx = sample_indices(data.size, min(cfg.ope_states, data.size), gen)
        for i in range(n):
            warm_nll = warm_start_std(policy.heads[i], obs_n, base_all[:, i], data.actions,
                                      cfg.std_warmup_steps, cfg.batch_size, gen)
            run.log(PHASE, 0, **{f"std_warmup_nll_{i}": warm_nll})
        start_hist = data.histories(ope_idx, policy.history)
        amq_raw = [am_q(head_act_fn(policy, policy.heads[i], i), dynamics, critics, start_hist, horizon,
                        data.normalize) for i in range(n)]
        run.log(PHASE, 0, **{f"amq_{i}": j for i, j in enumerate(amq_raw)})
        run.save_checkpoint(f"{PHASE}_cache", {
            "base": base_all, "ope_idx": ope_idx, "heads": [h.state_dict() for h in policy.heads],
            "amq_raw": amq_raw, "generator": gen.get_state(), "rng": capture_rng()})
    else:
        base_all, ope_idx, amq_raw = cached["base"], cached["ope_idx"], cached["amq_raw"]
        for h, s in zip(policy.heads, cached["heads"], strict=True):
            h.load_state_dict(s)
        gen.set_state(cached["generator"])
        restore_rng(cached["rng"])
    start_hist = data.histories(ope_idx, policy.history)

    best_heads = [copy.deepcopy(h.state_dict()) for h in policy.heads]
    amq_best = list(amq_raw)
    first_seed, start = 0, 0
    progress = run.load_checkpoint(f"{PHASE}_progress")
    resume_state = None
    if progress is not None:
        first_seed, start, amq_best, best_heads = (progress["seed"], progress["step"], progress["amq_best"],
                                                   progress["best_heads"])
        resume_state = progress
    run.drop_metrics(PHASE, first_seed * cfg.steps + start)

    for i in range(first_seed, n):
        head = policy.heads[i]
        head.load_state_dict(best_heads[i])
        old = copy.deepcopy(head).requires_grad_(False)
        opt = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / cfg.steps))
        clip, step = cfg.clip, 0
        if resume_state is not None and resume_state["seed"] == i:
            head.load_state_dict(resume_state["head"])
            old.load_state_dict(resume_state["old"])
            opt.load_state_dict(resume_state["optimizer"])
            sched.load_state_dict(resume_state["scheduler"])
            gen.set_state(resume_state["generator"])
            restore_rng(resume_state["rng"])
            clip, step = resume_state["clip"], start
            resume_state = None
        base_i = base_all[:, i]
        bar = ctx.bar(f"D BPPO sub-policy {i}", cfg.steps, step)
        bar.set_postfix(amq=f"{amq_best[i]:.4g}")
        while step < cfg.steps:
            idx = sample_indices(data.size, cfg.batch_size, gen)
            s, base = obs_n[idx], base_i[idx]
            with torch.no_grad():
                old_dist = old.distribution(s, base)
                a = old_dist.sample().clamp(-1, 1)
                old_logp = old_dist.log_prob(a)
                adv = critics.q_value(s, a) - critics.v(s)
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            dist = head.distribution(s, base)
            ratio = (dist.log_prob(a) - old_logp).exp()
            surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
            loss = -surrogate.mean() - cfg.entropy * dist.entropy().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            check_finite(loss, PHASE, step, f"BPPO loss of sub-policy {i}")
            nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step % cfg.ope_every == 0 or step == cfg.steps:
                j = am_q(head_act_fn(policy, head, i), dynamics, critics, start_hist, horizon, data.normalize)
                accepted = j > amq_best[i]
                if accepted:
                    amq_best[i] = j
                    old.load_state_dict(head.state_dict())
                    best_heads[i] = copy.deepcopy(head.state_dict())
                clip *= cfg.clip_decay
                run.log(PHASE, i * cfg.steps + step, **{f"amq_{i}": j, f"accepted_{i}": float(accepted),
                                                        f"loss_{i}": loss.item()})
                bar.set_postfix(amq=f"{j:.4g}", best=f"{amq_best[i]:.4g}")
                run.save_checkpoint(f"{PHASE}_progress", {
                    "seed": i, "step": step, "amq_best": amq_best, "best_heads": best_heads,
                    "head": head.state_dict(), "old": old.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "generator": gen.get_state(), "rng": capture_rng(),
                    "clip": clip})
        bar.close()
        start = 0

    for h, s in zip(policy.heads, best_heads, strict=True):
        h.load_state_dict(s)
    selected = int(torch.tensor(amq_best).argmax())
    run.log(PHASE, n * cfg.steps, selected=selected, **{f"amq_best_{i}": j for i, j in enumerate(amq_best)})
    run.save_checkpoint(PHASE, {"policy": policy.state(), "selected": selected, "amq_raw": amq_raw,
                                "amq_best": amq_best})
    return Improved(policy, selected, amq_raw, amq_best)
