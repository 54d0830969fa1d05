"""Phase A: IQL critics (SPEC §3A). Twin Q with a Polyak target, V by expectile regression.

Q_τ(s, a) = min of the target twins, V_τ(s) = V. States are z-scored with the dataset statistics.
Bootstraps through truncations (a truncated step's next state is still valued), not terminations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from uepo.nets import TwinQ, ValueNet
from uepo.phases import (
    PHASE_SEED_OFFSETS,
    PhaseContext,
    load_optimizer_state,
    optimizer_state,
    restore,
    sample_indices,
    snapshot,
)
from uepo.runs import check_finite, seed_everything

PHASE = "critics"


@dataclass
class Critics:
    q: TwinQ  # the target twins: Q_τ = min(q1, q2)
    v: ValueNet  # V_τ

    def q_value(self, obs_n: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.q(obs_n, action)


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    weight = torch.where(diff > 0, expectile, 1 - expectile)
    return (weight * diff**2).mean()


def build_critics(obs_dim: int, action_dim: int, hidden: int, layers: int) -> tuple[TwinQ, ValueNet]:
    return TwinQ(obs_dim, action_dim, hidden, layers), ValueNet(obs_dim, hidden, layers)


def train_critics(ctx: PhaseContext) -> Critics:
    cfg, data, run = ctx.cfg.critics, ctx.data, ctx.run
    done = run.load_checkpoint(PHASE)
    seed_everything(ctx.cfg.seed * 1000 + PHASE_SEED_OFFSETS[PHASE])  # each phase starts from its own seed
    q, v = build_critics(data.obs_dim, data.action_dim, cfg.hidden, cfg.layers)
    if done is not None:
        q.load_state_dict(done["q_target"])
        v.load_state_dict(done["v"])
        return Critics(q.eval(), v.eval())

    q_target = copy.deepcopy(q).requires_grad_(False)
    opts = {"q": torch.optim.Adam(q.parameters(), lr=cfg.lr_q),
            "v": torch.optim.Adam(v.parameters(), lr=cfg.lr_v)}
    gen = ctx.generator(PHASE)
    start = 0
    progress = run.load_checkpoint(f"{PHASE}_progress")
    if progress is not None:
        restore(progress, gen, q=q, q_target=q_target, v=v)
        load_optimizer_state(opts, progress["optimizers"])
        start = progress["step"]
    run.drop_metrics(PHASE, start)

    obs_n, next_n = data.normalize(data.obs), data.normalize(data.next_obs)
    not_done = 1.0 - data.terminals

    def save_progress(step: int) -> None:
        run.save_checkpoint(f"{PHASE}_progress", {**snapshot(gen, q=q, q_target=q_target, v=v),
                                                   "optimizers": optimizer_state(opts), "step": step})

    bar = ctx.bar("A critics (IQL)", cfg.steps, start)
    for step in range(start, cfg.steps):
        idx = sample_indices(data.size, cfg.batch_size, gen)
        s, a, r, s2, nd = obs_n[idx], data.actions[idx], data.rewards[idx], next_n[idx], not_done[idx]

        with torch.no_grad():
            target_q = q_target(s, a)
        v_loss = expectile_loss(target_q - v(s), cfg.expectile)
        opts["v"].zero_grad(set_to_none=True)
        v_loss.backward()
        opts["v"].step()

        with torch.no_grad():
            backup = r + cfg.gamma * nd * v(s2)
        q1, q2 = q.both(s, a)
        q_loss = 0.5 * (F.mse_loss(q1, backup) + F.mse_loss(q2, backup))
        opts["q"].zero_grad(set_to_none=True)
        q_loss.backward()
        opts["q"].step()

        with torch.no_grad():
            for p, tp in zip(q.parameters(), q_target.parameters(), strict=True):
                tp.lerp_(p, cfg.polyak)

        check_finite(q_loss, PHASE, step, "Q loss")
        check_finite(v_loss, PHASE, step, "V loss")
        bar.update(1)
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            metrics = {"q_loss": q_loss.item(), "v_loss": v_loss.item(), "q_mean": target_q.mean().item()}
            run.log(PHASE, step + 1, **metrics)
            bar.set_postfix(q_loss=f"{metrics['q_loss']:.3g}", v_loss=f"{metrics['v_loss']:.3g}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_progress(step + 1)
    bar.close()
    run.save_checkpoint(PHASE, {"q_target": q_target.state_dict(), "v": v.state_dict(), "q": q.state_dict(),
                                "config": {"hidden": cfg.hidden, "layers": cfg.layers,
                                           "obs_dim": data.obs_dim, "action_dim": data.action_dim}})
    return Critics(q_target.eval(), v.eval())
