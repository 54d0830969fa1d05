"""The online-IQL peer of phase E (issue 10): IQL fine-tuning from a run's own phase-A critics.

    python -m uepo.baselines iql-online --from_run runs/hopper-m-s0 --seed 0 --run_dir runs/peers/iql-s0

IQL's offline-to-online recipe (Kostrikov et al. 2022, §5.3; CORL's iql.py), on uepo's phase A:

1. **Actor extraction, offline.** A Gaussian actor π(a|s) = N(tanh(f(s)), σ) (state-independent σ) is
   fitted by advantage-weighted regression against the run's frozen phase-A critics:
   max E_D[w log π(a|s)], w = min(exp(β (Q_τ(s, a) − V_τ(s))), w_max), for ``actor_steps`` steps.
   IQL trains on rewards × 1000 / (max − min episode return); our critics keep the raw rewards, so β
   is applied in IQL's units (β × 1000 / spread on raw advantages), which keeps IQL's β = 3 meaningful.
2. **Online.** A replay buffer holds the dataset, then every new transition. Every ``update_every``
   env steps one IQL update runs on a batch drawn uniformly from it: V by expectile regression on the
   target twins, both twins to r + γ V(s') (no bootstrap after a termination), Polyak, then the actor
   by AWR. Acting samples π; the evaluation uses its mean.
3. **Scored as phase E is**: the same eval seeds (uepo.seeds.online_eval_seed), episodes and score
   normaliser, evaluated before any online step and every ``eval_every`` env steps, so the curves of
   ``metrics.csv`` (phase ``online``, key ``eval_score``) lie beside phase E's.

States are z-scored with the dataset's statistics, as phase A's critics expect. The expectile, γ,
Polyak rate and learning rates are the source run's phase-A values (the same critics, trained on).
A run killed at any moment resumes from ``checkpoints/iql_online.pt`` to the same numbers on the CPU.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from uepo import envs, seeds
from uepo.config import Config, f, from_dict, load_yaml
from uepo.data import OfflineData, load_offline_data
from uepo.nets import TwinQ, ValueNet, mlp
from uepo.phases import PhaseContext, sample_indices, snapshot
from uepo.phases.critics import build_critics, polyak_update, update_q, update_v
from uepo.phases.online import record_score, reference_scores
from uepo.phases.runner import Trainer, train
from uepo.runs import Run, provenance, seed_everything
from uepo.tasks import normalized_score

PHASE = "online"  # the curve sits where phase E's does: metrics.csv phase ``online``, key ``eval_score``
ACTOR_PHASE = "iql_actor"
LOG_STD_RANGE = (-5.0, 2.0)


@dataclass
class IQLOnlineConfig:
    env_steps: int = f(1_000_000, "online env steps (the protocol's budget, equal to phase E's)")
    actor_steps: int = f(25_000, "offline AWR steps of the fresh actor against the frozen critics (bench's "
                                 "phase-A budget)")
    batch_size: int = f(256, "transitions per update, drawn uniformly from dataset + online buffer")
    lr_actor: float = f(3e-4, "actor Adam learning rate (IQL's)")
    beta: float = f(3.0, "AWR inverse temperature β (IQL's locomotion value)")
    beta_on_iql_scale: bool = f(True, "β acts on advantages in IQL's reward units, 1000 / (max − min episode "
                                      "return of the data) times the critics' raw units, as IQL scales rewards")
    max_weight: float = f(100.0, "AWR weights are clipped at this")
    update_every: int = f(1, "env steps per IQL update (1: IQL's one update per env step)")
    hidden: int = f(256, "actor MLP width")
    layers: int = f(2, "actor MLP hidden layers")
    eval_every: int = f(50_000, "env steps between evaluations")
    eval_episodes: int = f(10, "deterministic episodes per evaluation (phase E's seeds)")
    log_every: int = f(1000, "env steps between metric rows")
    checkpoint_every: int = f(50_000, "env steps between resumable checkpoints")


class GaussianActor(nn.Module):
    """π(a | s) = N(tanh(f(s)), exp(log σ)), s z-scored (B, d_s) → a (B, d_a); IQL's actor."""

    def __init__(self, obs_dim: int, action_dim: int, hidden: int, layers: int):
        super().__init__()
        self.net = mlp(obs_dim, action_dim, hidden, layers)
        self.log_std = nn.Parameter(torch.zeros(action_dim))

    def forward(self, obs_n: Tensor) -> Tensor:
        return torch.tanh(self.net(obs_n))

    def distribution(self, obs_n: Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self(obs_n), self.log_std.clamp(*LOG_STD_RANGE).exp())


def awr_loss(actor: GaussianActor, q: TwinQ, v: ValueNet, s: Tensor, a: Tensor, beta: float,
             max_weight: float) -> Tensor:
    """−E[min(exp(β (Q_τ(s, a) − V_τ(s))), w_max) · log π(a | s)] (β in the critics' units)."""
    with torch.no_grad():
        weight = torch.exp(beta * (q(s, a) - v(s))).clamp(max=max_weight)
    return -(weight * actor.distribution(s).log_prob(a).sum(-1)).mean()


class ReplayBuffer:
    """The dataset's transitions followed by the online ones, in preallocated tensors (z-scored states)."""

    FIELDS = ("obs", "actions", "rewards", "next_obs", "not_done")

    def __init__(self, data: OfflineData, capacity: int):
        n = data.size
        self.offline, self.size = n, n
        total = n + capacity
        self.obs = torch.empty(total, data.obs_dim)
        self.next_obs = torch.empty(total, data.obs_dim)
        self.actions = torch.empty(total, data.action_dim)
        self.rewards, self.not_done = torch.empty(total), torch.empty(total)
        self.obs[:n], self.next_obs[:n] = data.normalize(data.obs), data.normalize(data.next_obs)
        self.actions[:n], self.rewards[:n], self.not_done[:n] = data.actions, data.rewards, 1.0 - data.terminals

    def add(self, obs_n: Tensor, action: Tensor, reward: float, next_obs_n: Tensor, terminated: bool) -> None:
        k = self.size
        self.obs[k], self.actions[k], self.next_obs[k] = obs_n, action, next_obs_n
        self.rewards[k], self.not_done[k] = reward, 0.0 if terminated else 1.0
        self.size += 1

    def sample(self, batch: int, gen: torch.Generator) -> tuple[Tensor, ...]:
        idx = sample_indices(self.size, batch, gen)
        return tuple(getattr(self, name)[idx] for name in self.FIELDS)

    def online_state(self) -> dict[str, Tensor]:
        """The online part only (the dataset part is rebuilt from the data on resume)."""
        return {name: getattr(self, name)[self.offline:self.size].clone() for name in self.FIELDS}

    def load_online_state(self, state: dict[str, Tensor]) -> None:
        k = state["obs"].shape[0]
        for name in self.FIELDS:
            getattr(self, name)[self.offline:self.offline + k] = state[name]
        self.size = self.offline + k


@dataclass
class Nets:
    """What IQL trains: the actor, the twin Q with its Polyak target, V, and their optimisers."""

    actor: GaussianActor
    q: TwinQ
    q_target: TwinQ
    v: ValueNet
    opts: dict[str, torch.optim.Optimizer]
    beta: float  # AWR's β in the critics' units

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.actor.state_dict(), "q": self.q.state_dict(), "q_target": self.q_target.state_dict(),
                "v": self.v.state_dict(), "optimizers": {k: o.state_dict() for k, o in self.opts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in ("actor", "q", "q_target", "v"):
            getattr(self, name).load_state_dict(state[name])
        for k, o in self.opts.items():
            o.load_state_dict(state["optimizers"][k])


class AWRTrainer(Trainer):
    """Step 1: one AWR update of the actor on a dataset batch against the frozen phase-A critics."""

    shown = ("actor_loss",)

    def __init__(self, nets: Nets, buffer: ReplayBuffer, cfg: IQLOnlineConfig, seed: int):
        self.nets, self.buffer, self.cfg = nets, buffer, cfg
        self.phase, self.checkpoint, self.label = ACTOR_PHASE, f"{ACTOR_PHASE}_progress", "IQL actor (AWR)"
        self.total, self.log_every, self.checkpoint_every = cfg.actor_steps, 1000, 5000
        self.generator = torch.Generator().manual_seed(seeds.phase_seed(seed, "peer_iql"))
        self.data_parallel = False

    def step(self, step: int) -> dict[str, Tensor]:
        s, a, *_ = self.buffer.sample(self.cfg.batch_size, self.generator)
        return {"actor_loss": update_actor(self.nets, s, a, self.cfg)}

    def state_dict(self) -> dict[str, Any]:
        return {"actor": self.nets.actor.state_dict(), "opt": self.nets.opts["actor"].state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.actor.load_state_dict(state["actor"])
        self.nets.opts["actor"].load_state_dict(state["opt"])


def advantage_beta(data: OfflineData, cfg: IQLOnlineConfig) -> float:
    """β in the critics' (raw reward) units: IQL trains on rewards × 1000 / (max − min episode return)."""
    if not cfg.beta_on_iql_scale:
        return cfg.beta
    spread = float(data.episode_returns.max() - data.episode_returns.min())
    return cfg.beta * 1000.0 / spread if spread > 0 else cfg.beta


def update_actor(nets: Nets, s: Tensor, a: Tensor, cfg: IQLOnlineConfig) -> Tensor:
    loss = awr_loss(nets.actor, nets.q_target, nets.v, s, a, nets.beta, cfg.max_weight)
    nets.opts["actor"].zero_grad(set_to_none=True)
    loss.backward()
    nets.opts["actor"].step()
    return loss.detach()


def iql_update(nets: Nets, batch: tuple[Tensor, ...], critic: dict[str, float], cfg: IQLOnlineConfig) -> dict:
    """One IQL update on ``batch``: V (expectile), both twins (r + γ V(s')), Polyak, the actor (AWR)."""
    s, a, r, s2, not_done = batch
    _, v_loss = update_v(nets.v, nets.q_target, nets.opts["v"], s, a, critic["expectile"])
    q_loss = update_q(nets.q, nets.v, nets.opts["q"], s, a, r, s2, not_done, critic["gamma"])
    polyak_update(nets.q, nets.q_target, critic["polyak"])
    actor_loss = update_actor(nets, s, a, cfg)
    return {"v_loss": v_loss, "q_loss": q_loss, "actor_loss": actor_loss}


class IQLOnlineTrainer(Trainer):
    """Step 2 as the loop sees it: one step = one env step (π sampled), its transition stored, and every
    ``update_every`` steps one IQL update; an evaluation every ``eval_every`` env steps."""

    shown = ("q_loss", "actor_loss")
    data_parallel = False

    def __init__(self, nets: Nets, buffer: ReplayBuffer, data: OfflineData, cfg: IQLOnlineConfig,
                 critic: dict[str, float], vec: envs.HistoryVectorEnv, evaluation: Any, ref: tuple[float, float],
                 seed: int):
        self.nets, self.buffer, self.data, self.cfg, self.critic = nets, buffer, data, cfg, critic
        self.vec, self.evaluation, self.ref = vec, evaluation, ref
        self.phase, self.checkpoint, self.label = PHASE, "iql_online", "IQL online"
        self.total, self.log_every, self.checkpoint_every = cfg.env_steps, cfg.log_every, cfg.checkpoint_every
        self.generator = torch.Generator().manual_seed(seeds.phase_seed(seed, "peer_iql") + 1)
        self.obs = vec.reset(seed=seeds.online_env_seeds(seed, 1))[0]
        self.losses: dict[str, Tensor] = {}
        self.episode = {"return": 0.0, "length": 0}
        self.finished_returns: list[float] = []
        self.history: dict[str, Any] = {"score_start": None, "best_score": -math.inf, "last_score": None,
                                        "next_eval": cfg.eval_every}

    def step(self, step: int) -> dict[str, Tensor]:
        obs_n = self.data.normalize(torch.as_tensor(self.obs[0, -1], dtype=torch.float32))
        with torch.no_grad():
            action = self.nets.actor.distribution(obs_n[None]).sample()[0].clamp(-1, 1)
        nxt, reward, terminated, truncated, info = self.vec.step(action.numpy()[None].astype(np.float64))
        final = info["final_obs"][0][-1] if (terminated[0] or truncated[0]) else nxt[0, -1]
        next_n = self.data.normalize(torch.as_tensor(final, dtype=torch.float32))
        self.buffer.add(obs_n, action, float(reward[0]), next_n, bool(terminated[0]))
        self.obs = nxt
        self.episode["return"] += float(reward[0])
        self.episode["length"] += 1
        if terminated[0] or truncated[0]:
            self.finished_returns.append(self.episode["return"])
            self.episode = {"return": 0.0, "length": 0}
        if (step + 1) % self.cfg.update_every == 0:
            self.losses = iql_update(self.nets, self.buffer.sample(self.cfg.batch_size, self.generator),
                                     self.critic, self.cfg)
        return self.losses

    def metrics(self, losses: dict[str, Tensor]) -> dict[str, float]:
        row = {k: float(v) for k, v in losses.items()}
        if self.finished_returns:
            rets = np.array(self.finished_returns)
            row.update(episode_return=float(rets.mean()), episode_score=float(normalized_score(rets, self.ref).mean()))
            self.finished_returns = []
        done = self.buffer.size - self.buffer.offline
        if done >= self.history["next_eval"] or done >= self.cfg.env_steps:
            row.update(self.evaluation(self.history))
            while self.history["next_eval"] <= done:
                self.history["next_eval"] += self.cfg.eval_every
        return row

    def postfix(self, row: dict[str, float]) -> dict[str, str]:
        last = self.history["last_score"]
        return {"score": "n/a" if last is None else f"{last:.1f}", "q": f"{row.get('q_loss', math.nan):.3g}"}

    def state_dict(self) -> dict[str, Any]:
        return {"nets": self.nets.state_dict(), "buffer": self.buffer.online_state(),
                "env_state": envs.capture_env_state(self.vec), "obs": torch.as_tensor(self.obs),
                "episode": dict(self.episode), "finished_returns": list(self.finished_returns),
                "history": dict(self.history),
                "config": dataclasses.asdict(self.cfg)}

    def resumes(self, state: dict[str, Any]) -> bool:
        mine = dataclasses.asdict(self.cfg)
        changed = {k for k, v in mine.items() if k not in ("env_steps", "eval_every", "checkpoint_every", "log_every")
                   and state["config"].get(k) != v}
        if changed:
            raise ValueError(f"checkpoints/iql_online.pt was made with other settings ({', '.join(sorted(changed))}); "
                             "resume with the same flags, or start a new run directory")
        return True

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.nets.load_state_dict(state["nets"])
        self.buffer.load_online_state(state["buffer"])
        envs.restore_env_state(self.vec, state["env_state"])
        self.obs = state["obs"].numpy().copy()
        self.episode, self.finished_returns = dict(state["episode"]), list(state["finished_returns"])
        self.history.update(state["history"])


def source_critics(source: Path) -> tuple[Config, dict]:
    """The source run's resolved config and its phase-A checkpoint (twins, their target, V)."""
    config_path, ckpt_path = source / "config.yaml", source / "checkpoints" / "critics.pt"
    for path in (config_path, ckpt_path):
        if not path.exists():
            raise FileNotFoundError(f"--from_run: {path} does not exist; pass a run directory whose phase A "
                                    "(critics) finished, e.g. one of python -m uepo.train --phases offline")
    try:
        critics = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torn or foreign file: say which and what to do
        raise RuntimeError(f"{ckpt_path} cannot be read ({exc}); rerun that run's phase A (delete the file and "
                           "run python -m uepo.train --resume on it)") from exc
    return from_dict(load_yaml(config_path)), critics


def build_nets(data: OfflineData, source_cfg: Config, critics: dict, cfg: IQLOnlineConfig) -> Nets:
    c = source_cfg.critics
    q, v = build_critics(data.obs_dim, data.action_dim, c.hidden, c.layers)
    q.load_state_dict(critics["q"])
    v.load_state_dict(critics["v"])
    q_target = copy.deepcopy(q).requires_grad_(False)
    q_target.load_state_dict(critics["q_target"])
    actor = GaussianActor(data.obs_dim, data.action_dim, cfg.hidden, cfg.layers)
    opts = {"actor": torch.optim.Adam(actor.parameters(), lr=cfg.lr_actor),
            "q": torch.optim.Adam(q.parameters(), lr=c.lr_q), "v": torch.optim.Adam(v.parameters(), lr=c.lr_v)}
    return Nets(actor, q, q_target, v, opts, advantage_beta(data, cfg))


def iql_online(source: Path, seed: int, run_dir: Path, cfg: IQLOnlineConfig, progress: bool = True) -> dict:
    """Fit the actor offline on ``source``'s critics, fine-tune online; resumable. Returns the summary."""
    source_cfg, critics = source_critics(Path(source))
    data = load_offline_data(source_cfg.dataset)
    env = data.env_spec or data.env_id
    ref = reference_scores(data.env_id, data.provenance)
    run = Run(Path(run_dir), resume=True)
    run.update_summary(peer="iql-online", source_run=str(source), dataset=data.provenance, seed=seed,
                       config=dataclasses.asdict(cfg), beta_raw_units=advantage_beta(data, cfg),
                       provenance=provenance())
    seed_everything(seeds.phase_seed(seed, "peer_iql"))
    nets = build_nets(data, source_cfg, critics, cfg)
    buffer = ReplayBuffer(data, cfg.env_steps)
    critic = {"expectile": source_cfg.critics.expectile, "gamma": source_cfg.critics.gamma,
              "polyak": source_cfg.critics.polyak}
    ctx = PhaseContext(run, Config(seed=seed), data, torch.device("cpu"), progress)
    eval_seed = seeds.online_eval_seed(seed)

    def act(obs_history: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            obs_n = data.normalize(torch.as_tensor(obs_history[:, -1], dtype=torch.float32))
            return nets.actor(obs_n).numpy().astype(np.float64)

    def evaluation(history: dict) -> dict[str, float]:
        if cfg.eval_episodes <= 0:
            return {}
        returns, lengths = envs.run_episodes(act, env, cfg.eval_episodes, eval_seed, 1)
        score = float(np.mean(normalized_score(returns, ref)))
        record_score(history, score)
        return {"eval_return": float(returns.mean()), "eval_score": score, "eval_length": float(lengths.mean())}

    vec = envs.make_vector_env(env, 1, 1)
    try:
        with run.timer("iql_online"):
            actor_done = run.load_checkpoint(ACTOR_PHASE)
            if actor_done is None:
                train(ctx, AWRTrainer(nets, buffer, cfg, seed))
                run.save_checkpoint(ACTOR_PHASE, {"actor": nets.actor.state_dict(),
                                                  "opt": nets.opts["actor"].state_dict()})
            else:
                nets.actor.load_state_dict(actor_done["actor"])
                nets.opts["actor"].load_state_dict(actor_done["opt"])
            trainer = IQLOnlineTrainer(nets, buffer, data, cfg, critic, vec, evaluation, ref, seed)
            if run.load_checkpoint(trainer.checkpoint) is None:  # the evaluation before any online step
                run.drop_metrics(PHASE)
                first = evaluation(trainer.history)
                if first:
                    run.log(PHASE, 0, **first)
            done = train(ctx, trainer)
            run.save_checkpoint(trainer.checkpoint, {**trainer.state_dict(), **snapshot(trainer.generator),
                                                     "step": done})  # a rerun finds it finished
            history = trainer.history
            summary = {"env_steps": buffer.size - buffer.offline, "score_start": history["score_start"],
                       "score_final": history["last_score"],
                       "score_best": history["best_score"] if history["last_score"] is not None else None,
                       "ref_scores": list(ref), "eval_episodes": cfg.eval_episodes}
            run.update_summary(online=summary)
    finally:
        vec.close()
        run.close()
    return summary
