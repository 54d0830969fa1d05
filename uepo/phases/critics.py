"""Phase A: IQL critics (SPEC §3A). Twin Q with a Polyak target, V by expectile regression.

Q_τ(s, a) = min of the target twins, V_τ(s) = V. States are z-scored with the dataset statistics.
Bootstraps through truncations (a truncated step's next state is still valued), not terminations.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from uepo.nets import TwinQ, ValueNet
from uepo.phases import PhaseContext, load_optimizer_state, optimizer_state, sample_indices
from uepo.phases.runner import Trainer, train
from uepo.runs import seed_everything
from uepo.seeds import phase_seed

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


def update_v(v: ValueNet, q_target: TwinQ, opt: torch.optim.Optimizer, s: Tensor, a: Tensor,
             expectile: float) -> tuple[Tensor, Tensor]:
    """V ← expectile of the target twins' min at the batch's actions; returns (that min, the loss)."""
    with torch.no_grad():
        target_q = q_target(s, a)
    v_loss = expectile_loss(target_q - v(s), expectile)
    opt.zero_grad(set_to_none=True)
    v_loss.backward()
    opt.step()
    return target_q, v_loss.detach()


def update_q(q: TwinQ, v: ValueNet, opt: torch.optim.Optimizer, s: Tensor, a: Tensor, r: Tensor, s2: Tensor,
             not_done: Tensor, gamma: float) -> Tensor:
    """Both twins ← r + γ V(s') (no bootstrap after a termination)."""
    with torch.no_grad():
        backup = r + gamma * not_done * v(s2)
    q1, q2 = q.both(s, a)
    q_loss = 0.5 * (F.mse_loss(q1, backup) + F.mse_loss(q2, backup))
    opt.zero_grad(set_to_none=True)
    q_loss.backward()
    opt.step()
    return q_loss.detach()


def polyak_update(q: TwinQ, q_target: TwinQ, rate: float) -> None:
    with torch.no_grad():
        for p, tp in zip(q.parameters(), q_target.parameters(), strict=True):
            tp.lerp_(p, rate)


class IQLTrainer(Trainer):
    """Phase A as the loop sees it: one step = one V update, one twin-Q update, one Polyak step."""

    shown = ("q_loss", "v_loss")

    def __init__(self, ctx: PhaseContext):
        cfg, data = ctx.cfg.critics, ctx.data
        self.cfg, self.data = cfg, data
        self.phase, self.checkpoint, self.label = PHASE, f"{PHASE}_progress", "A critics (IQL)"
        self.total, self.log_every, self.checkpoint_every = cfg.steps, cfg.log_every, cfg.checkpoint_every
        self.generator, self.world = ctx.generator(PHASE), ctx.world
        q, v = build_critics(data.obs_dim, data.action_dim, cfg.hidden, cfg.layers)
        self.q, self.v = q.to(ctx.device), v.to(ctx.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.opts = {"q": torch.optim.Adam(self.q.parameters(), lr=cfg.lr_q),
                     "v": torch.optim.Adam(self.v.parameters(), lr=cfg.lr_v)}
        self.obs_n, self.next_n = data.normalize(data.obs), data.normalize(data.next_obs)
        self.not_done = 1.0 - data.terminals
        self.target_q = torch.zeros(())

    def step(self, step: int) -> dict[str, Tensor]:
        idx = self.world.shard(sample_indices(self.data.size, self.cfg.batch_size, self.generator))
        s, a = self.obs_n[idx], self.data.actions[idx]
        v_loss = self._update_v(s, a)
        q_loss = self._update_q(s, a, self.data.rewards[idx], self.next_n[idx], self.not_done[idx])
        self._update_target()
        return {"q_loss": q_loss, "v_loss": v_loss}

    def parallel_modules(self) -> tuple[torch.nn.Module, ...]:
        return self.q, self.v

    def _update_v(self, s: Tensor, a: Tensor) -> Tensor:
        self.target_q, v_loss = update_v(self.v, self.q_target, self.opts["v"], s, a, self.cfg.expectile)
        return v_loss

    def _update_q(self, s: Tensor, a: Tensor, r: Tensor, s2: Tensor, not_done: Tensor) -> Tensor:
        return update_q(self.q, self.v, self.opts["q"], s, a, r, s2, not_done, self.cfg.gamma)

    def _update_target(self) -> None:
        polyak_update(self.q, self.q_target, self.cfg.polyak)

    def metrics(self, losses: dict[str, Tensor]) -> dict[str, float]:
        return {"q_loss": losses["q_loss"].item(), "v_loss": losses["v_loss"].item(),
                "q_mean": self.target_q.mean().item()}

    def state_dict(self) -> dict:
        return {"q": self.q.state_dict(), "q_target": self.q_target.state_dict(), "v": self.v.state_dict(),
                "optimizers": optimizer_state(self.opts)}

    def load_state_dict(self, state: dict) -> None:
        self.q.load_state_dict(state["q"])
        self.q_target.load_state_dict(state["q_target"])
        self.v.load_state_dict(state["v"])
        load_optimizer_state(self.opts, state["optimizers"])


def train_critics(ctx: PhaseContext) -> Critics:
    cfg, data, run = ctx.cfg.critics, ctx.data, ctx.run
    done = run.load_checkpoint(PHASE)
    seed_everything(phase_seed(ctx.cfg.seed, PHASE))  # each phase starts from its own seed
    if done is not None:
        q, v = build_critics(data.obs_dim, data.action_dim, cfg.hidden, cfg.layers)
        q.load_state_dict(done["q_target"])
        v.load_state_dict(done["v"])
        return Critics(q.to(ctx.device).eval(), v.to(ctx.device).eval())
    trainer = IQLTrainer(ctx)
    train(ctx, trainer)
    run.save_checkpoint(PHASE, {"q_target": trainer.q_target.state_dict(), "v": trainer.v.state_dict(),
                                "q": trainer.q.state_dict(),
                                "config": {"hidden": cfg.hidden, "layers": cfg.layers,
                                           "obs_dim": data.obs_dim, "action_dim": data.action_dim}})
    return Critics(trainer.q_target.eval(), trainer.v.eval())
