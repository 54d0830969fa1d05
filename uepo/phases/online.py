"""Phase E: online PPO fine-tuning of the selected sub-policy (SPEC §3 E).

The actor is sub-policy i*: its residual Gaussian head φ_{i*} around the diffusion action
μ^{i*}_1(S_t), which comes from the fused multi-seed sampler. The backbone stays frozen by default
(so μ^{i*}_1 is computed once per env step and stored in the rollout); with
``freeze_backbone=False`` the updates recompute it through the differentiable chain. The critic
starts from IQL's V_τ. Rewards are scaled by ``reward_scale``; V_τ is rescaled by the same factor
(the value of scaled rewards is the scaled value), which is the refit in closed form.

Truncated episodes are bootstrapped with V(final state), terminated ones are not. PPO's losses, GAE
and the rollout buffer are uepo.phases.ppo; the loop is uepo.phases.runner's (``PPOTrainer``).

Resumable: a checkpoint is written at rollout boundaries (every ``checkpoint_every`` env steps and
at the end). It holds the networks, optimisers, RNG states, counters, the current observations and
the exact physics/RNG state of every env, so a run killed at any moment and resumed on the CPU
continues exactly as the uninterrupted run would have (metrics rows logged after the last
checkpoint are dropped on resume and logged again).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec
from torch import Tensor, nn

from uepo import envs, graphs, ops, seeds, tasks
from uepo.config import Config, OnlineConfig
from uepo.nets import LOG_STD_MAX, LOG_STD_MIN, ValueNet
from uepo.phases import PhaseContext, snapshot
from uepo.phases.ppo import Rollout, clipped_policy_loss, clipped_value_loss, gae, gaussian_log_prob
from uepo.phases.runner import Trainer, train
from uepo.policy import MultiSeedPolicy
from uepo.runs import Run, check_finite, seed_everything
from uepo.tasks import normalized_score

PHASE = "online"
CHECKPOINT = "online"
ActOut = tuple[Tensor, Tensor, Tensor, Tensor]  # μ^{i*}_1, a, the head's mean and scale, each (num_envs, d_a)


def reference_scores(env_id: str, dataset_info: dict | None = None) -> tuple[float, float]:
    """(ref_min, ref_max) from the dataset's provenance (its Minari metadata), else D4RL's constants."""
    info = dataset_info or {}
    ref = tasks.reference_scores(env_id, info.get("dataset_id", ""), info)
    if ref is None:
        raise ValueError(f"no reference returns for env {env_id!r}: the dataset's metadata has none and "
                         "it is not a D4RL robot; pass ref_scores=(min, max)")
    return ref


# ---------------------------------------------------------------------------------------------
# The phase
# ---------------------------------------------------------------------------------------------


def load_value(value_state: dict, obs_dim: int) -> ValueNet:
    """V_τ from the offline bundle: {"state_dict", "config": {hidden, layers}} (or a bare state_dict)."""
    sd = value_state.get("state_dict", value_state)
    cfg = value_state.get("config", {}) if "state_dict" in value_state else {}
    linears = [k for k in sd if k.endswith(".weight") and sd[k].dim() == 2]
    hidden = int(cfg.get("hidden", sd[linears[0]].shape[0]))
    layers = int(cfg.get("layers", len(linears) - 1))
    net = ValueNet(int(cfg.get("obs_dim", obs_dim)), hidden, layers)
    net.load_state_dict(sd)
    return net


def scale_value(value: ValueNet, factor: float) -> None:
    """V ← factor·V by scaling the output layer (exact: the value of scaled rewards)."""
    out = [m for m in value.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        out.weight.mul_(factor)
        out.bias.mul_(factor)


class OnlineAgent:
    """Sub-policy i* (backbone, frozen by default, + head) and the critic, with their optimisers.

    Acting always goes through the fused sampler (no autograd). When the backbone trains
    (``freeze_backbone=False``), the updates recompute μ^{i*}_1 with the differentiable PyTorch
    chain, the same function, so that the policy gradient reaches the denoiser.
    """

    def __init__(self, policy: MultiSeedPolicy, selected: int, value: ValueNet, cfg: OnlineConfig,
                 robot: str | None = None):
        self.policy, self.selected, self.value = policy, selected, value
        self.head = policy.heads[selected]
        if cfg.init_std > 0:  # a resumed run loads its own head over this
            self.head.reset_std(cfg.init_std)
        self.train_backbone = not cfg.freeze_backbone
        policy.denoiser.requires_grad_(self.train_backbone)
        self.head.requires_grad_(True).log_std_layer.requires_grad_(cfg.learn_std)  # learn_std False: σ stays
        self.actor_params = [q for q in self.head.parameters() if q.requires_grad]
        if self.train_backbone:
            self.actor_params += list(policy.denoiser.parameters())
        self.lr_actor = cfg.lr_actor or tasks.family(robot).online_lr_actor  # 0: the robot family's
        self.opt_actor = torch.optim.Adam(self.actor_params, lr=self.lr_actor, eps=1e-5)
        self.opt_critic = torch.optim.Adam(self.value.parameters(), lr=cfg.lr_critic, eps=1e-5)
        self.cuda_graph = cfg.cuda_graph
        self._graphed: dict[int, Callable] = {}  # num_envs -> the captured acting step

    def base_with_grad(self, obs_history: Tensor) -> Tensor:
        """μ^{i*}_1 for raw (B, T_o, d_s) histories, differentiable in the backbone's weights."""
        p = self.policy
        cond = p.cond(obs_history)
        if p.kind == "gaussian-ensemble":
            return p.denoiser(cond)[0][:, self.selected]

        def eps_fn(x: Tensor, t: int, c: Tensor) -> Tensor:
            return p.denoiser(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device), c)

        bank = p.seeds
        chunks, _ = ops.multiseed_ddim(eps_fn, cond, bank.noise, bank.perturb, p.steps.timesteps,
                                       p.steps.alpha_bars, p.eta, p.tau, divergence_fn=ops.divergence)
        return chunks[:, self.selected, 0]

    def action_sampler(self) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]:
        """(normalised s, μ^{i*}_1) -> a ~ π(·|s) and the head's Gaussian (mean, scale), no autograd.

        ``ops.residual_head`` on the head's weights (at B = 1 calling its nn.Module layers costs about as
        much as their matmuls). The draw is what torch.normal(mean, scale) (Normal.sample) computes,
        N(0, 1)·scale + mean from the same generator, in half its time; log π(a|s) is scored after the
        rollout (``gaussian_log_prob``). Build it again after replacing the head's parameter objects.
        """
        head = self.head_weights()

        def draw(obs_n: Tensor, base: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return ops.residual_head(obs_n, base, head, LOG_STD_MIN, LOG_STD_MAX, torch.randn_like(base))

        return draw

    def head_weights(self) -> list[Tensor]:
        """The head's parameters as ``uepo::acting_step`` takes them: the trunk's (weight, bias) pairs, then
        the mean layer's and the log-std layer's (the objects themselves: in-place updates are seen)."""
        head = self.head
        layers = list(head.trunk)
        pairs = list(zip(layers[::2], layers[1::2], strict=False))
        if len(layers) % 2 or not all(isinstance(a, nn.Linear) and isinstance(b, nn.ReLU) for a, b in pairs):
            raise TypeError("the acting step expects the head's trunk to be (Linear, ReLU) pairs, as nets.mlp "
                            "builds it")
        return [t for lin, _ in pairs for t in (lin.weight, lin.bias)] + [
            head.mean_layer.weight, head.mean_layer.bias, head.log_std_layer.weight, head.log_std_layer.bias]

    def acting_step(self, num_envs: int, fused: bool = True) -> Callable[[Tensor], ActOut]:
        """Raw histories (num_envs, T_o, d_s) on the policy's device -> (μ^{i*}_1, a, mean, scale): what one
        env step computes. Where the sampler is the compiled op, one ``uepo::acting_step`` call: the step
        below (normalise, sampler, ``residual_head``) without its Python calls. With ``cuda_graph`` it is
        replayed from a
        CUDA graph captured at the first call (the head's and backbone's weights are read in place, so the
        updates are seen). ``fused=False``: the step below (tests compare the two)."""
        p = self.policy
        sampler_args = p.sampler_op_args()
        if fused and sampler_args is not None and not self.cuda_graph:
            op, head, prediction = torch.ops.uepo.acting_step.default, self.head_weights(), p.prediction
            mean_std, shape, dtype = (p.obs_mean, p.obs_std), (num_envs, p.action_dim), p.obs_mean.dtype

            def one_call(hist: Tensor) -> ActOut:
                z = torch.randn(shape, dtype=dtype, device=hist.device)  # the step below's randn_like(base)
                if hist.dtype != dtype:  # (no .to call when equal: at B = 1 it costs ~1 % of the step)
                    hist = hist.to(dtype)
                return op(hist, *mean_std, *sampler_args, self.selected, head, LOG_STD_MIN, LOG_STD_MAX, z, prediction)

            return one_call
        base_of, draw = p.base_sampler(self.selected), self.action_sampler()

        def step(hist: Tensor) -> ActOut:
            cond = p.normalize(hist)
            base = base_of(cond.view(num_envs, -1))
            return (base, *draw(cond[:, -1], base))

        if not self.cuda_graph:
            return step
        if num_envs not in self._graphed:
            example = torch.zeros(num_envs, p.history, p.obs_dim, device=p.obs_mean.device)
            self._graphed[num_envs] = graphs.capture(step, example)
        return self._graphed[num_envs]

    @torch.no_grad()
    def act(self, obs_history: np.ndarray) -> np.ndarray:
        """Deterministic action (the head's mean), for evaluation."""
        hist = torch.as_tensor(obs_history, dtype=torch.float32, device=self.policy.obs_mean.device)
        return self.policy.act(hist, self.selected, deterministic=True).double().cpu().numpy()

    def state(self) -> dict:
        return {"head": self.head.state_dict(), "value": self.value.state_dict(),
                "backbone": self.policy.denoiser.state_dict() if self.train_backbone else None,
                "opt_actor": self.opt_actor.state_dict(), "opt_critic": self.opt_critic.state_dict()}

    def load(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        if self.train_backbone:
            self.policy.denoiser.load_state_dict(state["backbone"])
        self.value.load_state_dict(state["value"])
        self.opt_actor.load_state_dict(state["opt_actor"])
        self.opt_critic.load_state_dict(state["opt_critic"])


def _collect(agent: OnlineAgent, vec: Any, obs: np.ndarray, steps: int, cfg: OnlineConfig,
             ep_return: np.ndarray, ep_length: np.ndarray,
             finished: list[tuple[float, int]]) -> tuple[Rollout, np.ndarray]:
    """Run ``steps`` steps in each env (updating the running episode stats in place); returns
    the rollout and the observations to continue from.

    An env step runs only what the next action needs: normalise, sampler, head, draw, env. What
    the update needs besides, V(s_t), V(s_{t+1}), V(final state) of truncated episodes and
    log π(a_t|s_t), is computed after the loop, one batch each (at B = 1 the value net per step
    cost a tenth of the step). Batched, V may differ from a per-step evaluation in the last bit
    (GEMM blocking); the actions, states and log-probs are the same numbers.
    """
    n, p = vec.num_envs, agent.policy
    device = p.obs_mean.device  # the envs step on the CPU: one transfer in (the history), one out (the action)
    hist = torch.empty(steps + 1, n, p.history, p.obs_dim)  # raw histories S_0 … S_T, float32, on the CPU
    # per-step reads and writes through views made once (at B = 1 torch indexing per step cost ~5 % of it)
    hist_np, hist_t = hist.numpy(), hist.unbind(0)
    hist_np[0] = obs
    bases, actions, means, scales = [], [], [], []
    rewards = np.zeros((steps, n))
    terminated, truncated = np.zeros((steps, n), dtype=bool), np.zeros((steps, n), dtype=bool)
    finals: list[tuple[int, int, np.ndarray]] = []  # (t, env, final state) where an episode was truncated
    env_action = np.empty((n, p.action_dim))  # float64, as the envs take it
    on_cpu = device == hist.device  # else the envs' states go to the policy's device, one transfer per step
    with torch.inference_mode():  # ~5 % of a step at B = 1 over no_grad; writes into `hist` are in place
        act = agent.acting_step(n)
        for t in range(steps):
            base, action, mean, scale = act(hist_t[t] if on_cpu else hist_t[t].to(device))
            bases.append(base), actions.append(action), means.append(mean), scales.append(scale)
            np.copyto(env_action, action.numpy() if on_cpu else action.cpu().numpy())
            np.minimum(np.maximum(env_action, -1.0, out=env_action), 1.0, out=env_action)  # np.clip, 3x faster
            obs, rewards[t], terminated[t], truncated[t], info = vec.step(env_action)
            hist_np[t + 1] = obs
            ep_return += rewards[t]
            ep_length += 1
            for k in np.flatnonzero(terminated[t] | truncated[t]):
                finished.append((float(ep_return[k]), int(ep_length[k])))
                ep_return[k], ep_length[k] = 0.0, 0
                if not terminated[t, k]:  # bootstrap from the episode's own final state, not the reset one
                    finals.append((t, k, info["final_obs"][k][-1]))
    with torch.no_grad():  # outside inference mode, so that the rollout's tensors can enter the update's autograd
        values, next_values = _values(agent, hist, finals)
        action_t = torch.stack(actions)
        logp = gaussian_log_prob(action_t, torch.stack(means), torch.stack(scales))
    hist = hist.to(device)
    return Rollout(hist=hist[:steps], obs=p.normalize(hist[:steps, :, -1]), base=torch.stack(bases),
                   actions=action_t, logp=logp, values=values,
                   rewards=torch.as_tensor(rewards * cfg.reward_scale, dtype=torch.float32, device=device),
                   next_values=next_values,
                   terminated=torch.as_tensor(terminated, dtype=torch.float32, device=device),
                   ended=torch.as_tensor(terminated | truncated, dtype=torch.float32, device=device)), obs


def _values(agent: OnlineAgent, hist: Tensor, finals: list[tuple[int, int, np.ndarray]]) -> tuple[Tensor, Tensor]:
    """V(s_t) and V(s_{t+1}) (T, N) of a rollout's (T + 1, N, T_o, d_s) histories, in one batch; where
    an episode was truncated at t, V(s_{t+1}) is V of its final state (same-step autoreset put the
    next episode's first state in s_{t+1})."""
    p = agent.policy
    device = p.obs_mean.device
    states = p.normalize(hist[:, :, -1].to(device)).flatten(0, 1)
    if finals:
        last = torch.as_tensor(np.stack([f for _, _, f in finals]), dtype=torch.float32, device=device)
        states = torch.cat([states, p.normalize(last)])
    v = agent.value(states)
    all_v = v[:hist.shape[0] * hist.shape[1]].view(hist.shape[:2])
    next_values = all_v[1:].clone()
    if finals:
        next_values[[t for t, _, _ in finals], [k for _, k, _ in finals]] = v[all_v.numel():]
    return all_v[:-1], next_values


def _update(agent: OnlineAgent, buf: Rollout, cfg: OnlineConfig, step: int) -> dict[str, float]:
    """K epochs of minibatch PPO on one rollout; returns the mean diagnostics. While ``step`` (env steps
    so far) is within ``cfg.value_warmup_steps`` only V learns: the actor waits for advantages of a
    critic fitted to its own returns."""
    warming = cfg.value_warmup_steps > 0 and step <= cfg.value_warmup_steps
    adv, returns = gae(buf.rewards, buf.values, buf.next_values, buf.terminated, buf.ended,
                       cfg.gamma, cfg.gae_lambda)
    flat = {f.name: getattr(buf, f.name).flatten(0, 1) for f in dataclasses.fields(buf)}
    flat["adv"], flat["returns"] = adv.reshape(-1), returns.reshape(-1)
    total = flat["adv"].shape[0]
    sums: dict[str, float] = {}
    count = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(total)
        for start in range(0, total, cfg.minibatch_size):
            idx = order[start:start + cfg.minibatch_size]
            mb_adv = flat["adv"][idx]
            if len(idx) > 1:
                mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            base = agent.base_with_grad(flat["hist"][idx]) if agent.train_backbone else flat["base"][idx]
            dist = agent.head.distribution(flat["obs"][idx], base)
            logp = dist.log_prob(flat["actions"][idx])
            policy_loss, clip_frac = clipped_policy_loss(logp, flat["logp"][idx], mb_adv, cfg.clip)
            entropy = dist.entropy().mean()
            value_loss = clipped_value_loss(agent.value(flat["obs"][idx]), flat["values"][idx],
                                            flat["returns"][idx], cfg.value_clip)
            for name, loss in (("policy_loss", policy_loss), ("value_loss", value_loss)):
                check_finite(loss, PHASE, step, name)
            agent.opt_actor.zero_grad(set_to_none=True)
            agent.opt_critic.zero_grad(set_to_none=True)
            actor_loss = 0.0 if warming else policy_loss - cfg.entropy * entropy
            (actor_loss + value_loss).backward()  # disjoint parameters
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(agent.actor_params, cfg.grad_clip)
                nn.utils.clip_grad_norm_(agent.value.parameters(), cfg.grad_clip)
            if not warming:
                agent.opt_actor.step()
            agent.opt_critic.step()
            with torch.no_grad():
                log_ratio = logp - flat["logp"][idx]
                approx_kl = (log_ratio.exp() - 1 - log_ratio).mean()  # ≥ 0, low variance
            for k, v in (("policy_loss", policy_loss), ("value_loss", value_loss), ("entropy", entropy),
                         ("approx_kl", approx_kl), ("clip_frac", clip_frac)):
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            count += 1
    stats = {k: v / count for k, v in sums.items()}
    var = flat["returns"].var()
    stats["explained_var"] = float(1 - (flat["returns"] - flat["values"]).var() / var) if var > 0 else 0.0
    with torch.no_grad():
        _, log_std = agent.head(flat["obs"], flat["base"])
    stats["action_std"] = float(log_std.exp().mean())
    return stats


class PPOTrainer(Trainer):
    """Phase E as the loop (uepo.phases.runner) sees it: one step = one rollout of ``rollout_steps`` env
    steps and its PPO update, logged at its env-step count, with an evaluation every ``eval_every`` env
    steps; a progress checkpoint (checkpoints/online.pt, read by evaluate and load_policy too) every
    ``checkpoint_every``. Its state holds the networks, optimisers, counters, the current observations and
    the exact physics/RNG state of every env; the loop adds the global RNGs."""

    data_parallel = False  # rank 0 alone runs phase E

    def __init__(self, cfg: OnlineConfig, agent: OnlineAgent, vec: Any, obs: np.ndarray, bundle: dict,
                 evaluation: Callable[[], dict[str, float]], ref: tuple[float, float]):
        self.cfg, self.agent, self.vec, self.obs, self.ref = cfg, agent, vec, obs, ref
        self.bundle, self.evaluation = bundle, evaluation  # bundle: offline.pt's entries that online.pt repeats
        self.phase, self.checkpoint, self.label = PHASE, CHECKPOINT, "E online PPO"
        self.steps_per_env = cfg.rollout_steps // vec.num_envs
        self.per_rollout = self.steps_per_env * vec.num_envs
        self.total = math.ceil(cfg.env_steps / self.per_rollout)
        self.generator = torch.Generator()  # unused: PPO draws from the global RNGs, which the loop saves
        self.config = dataclasses.asdict(cfg)
        self.counters = {"env_steps": 0, "updates": 0, "next_eval": cfg.eval_every,
                         "next_checkpoint": cfg.checkpoint_every}
        self.history: dict[str, Any] = {"score_start": None, "best_score": -math.inf, "last_score": None,
                                        "collect_s": 0.0, "collect_steps": 0}
        self.ep_return, self.ep_length = np.zeros(vec.num_envs), np.zeros(vec.num_envs, dtype=np.int64)
        self.stats: dict[str, float] = {}

    def metric_step(self, done: int) -> int:
        return done * self.per_rollout

    def step(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        finished: list[tuple[float, int]] = []
        buf, self.obs = _collect(self.agent, self.vec, self.obs, self.steps_per_env, self.cfg, self.ep_return,
                                 self.ep_length, finished)
        counters, history = self.counters, self.history
        counters["env_steps"] += self.per_rollout
        elapsed = time.perf_counter() - start
        history["collect_s"] += elapsed
        history["collect_steps"] += self.per_rollout
        lr_fraction = self.anneal(step)
        stats = _update(self.agent, buf, self.cfg, counters["env_steps"])
        stats["lr_fraction"] = lr_fraction
        counters["updates"] += 1
        if finished:
            rets = np.array([r for r, _ in finished])
            stats.update(episode_return=float(rets.mean()),
                         episode_score=float(normalized_score(rets, self.ref).mean()),
                         episode_length=float(np.mean([n for _, n in finished])))
        self.stats = {**stats, "env_steps_per_s": self.per_rollout / elapsed}
        return {"policy_loss": stats["policy_loss"], "value_loss": stats["value_loss"]}

    def anneal(self, step: int) -> float:
        """With ``anneal_lr`` both learning rates are (1 − step/total) of their own for rollout ``step`` (0-based),
        from the step alone, so a resumed run sets what the uninterrupted one did. Returns the fraction."""
        fraction = 1.0 - step / self.total if self.cfg.anneal_lr else 1.0
        for opt, lr in ((self.agent.opt_actor, self.agent.lr_actor), (self.agent.opt_critic, self.cfg.lr_critic)):
            for group in opt.param_groups:
                group["lr"] = fraction * lr
        return fraction

    def metrics(self, losses: dict[str, float]) -> dict[str, float]:
        """The update's diagnostics, and the evaluation's when one is due (every ``eval_every``, and at the end)."""
        row, counters = dict(self.stats), self.counters
        if counters["env_steps"] >= counters["next_eval"] or counters["env_steps"] >= self.cfg.env_steps:
            row.update(self.evaluation())
            while counters["next_eval"] <= counters["env_steps"]:
                counters["next_eval"] += self.cfg.eval_every
        return row

    def postfix(self, row: dict[str, float]) -> dict[str, str]:
        last = self.history["last_score"]
        return {"score": "n/a" if last is None else f"{last:.1f}", "ret": f"{row.get('episode_return', math.nan):.0f}"}

    def should_checkpoint(self, done: int) -> bool:
        counters = self.counters
        if self.finished(done) or counters["env_steps"] < counters["next_checkpoint"]:
            return False
        while counters["next_checkpoint"] <= counters["env_steps"]:
            counters["next_checkpoint"] += self.cfg.checkpoint_every
        return True

    def resumes(self, state: dict) -> bool:
        _check_resumable(state, self.config, int(self.bundle["selected"]))
        # a checkpoint of the version before the runner: its rollout count and an unused generator
        state.setdefault("step", state["counters"]["env_steps"] // self.per_rollout)
        state.setdefault("generator", self.generator.get_state())
        return True

    def state_dict(self, done: bool = False, summary: dict | None = None) -> dict:
        agent = self.agent
        return {**self.bundle, "policy": agent.policy.state(),
                "value": {"state_dict": agent.value.state_dict(), "config": {"obs_dim": agent.policy.obs_dim}},
                "agent": agent.state(), "counters": self.counters, "history": self.history, "config": self.config,
                "env_state": envs.capture_env_state(self.vec), "obs": torch.as_tensor(self.obs),
                "ep_return": torch.as_tensor(self.ep_return), "ep_length": torch.as_tensor(self.ep_length),
                "done": done, "summary": summary}

    def load_state_dict(self, state: dict) -> None:
        self.agent.load(state["agent"])
        self.counters, self.history = dict(state["counters"]), dict(state["history"])
        envs.restore_env_state(self.vec, state["env_state"])
        self.obs = state["obs"].numpy().copy()
        self.ep_return, self.ep_length = state["ep_return"].numpy().copy(), state["ep_length"].numpy().copy()


def run_online(
    run: Run,
    cfg: OnlineConfig,
    offline: dict,
    seed: int,
    env: str | EnvSpec | None = None,
    ref_scores: tuple[float, float] | None = None,
    progress: bool = True,
    device: torch.device | str = "cpu",
) -> dict:
    """PPO from the offline bundle (checkpoints/offline.pt: policy, selected, value, dataset,
    env_id); resumes from checkpoints/online.pt when the run holds one. Returns the summary.

    The networks, optimisers and rollout tensors live on ``device``; the envs step on the CPU, with
    one transfer each way per step (the history in, the action out). The loop, its progress bar,
    metrics rows, checkpoints and resume are uepo.phases.runner's; a run killed at any moment and
    resumed on the CPU continues exactly as the uninterrupted run would have."""
    env = env if env is not None else offline["env_id"]
    env_id = env if isinstance(env, str) else env.id
    ref = ref_scores or reference_scores(env_id, offline.get("dataset"))
    policy = MultiSeedPolicy.from_state(offline["policy"]).to(device)
    selected = int(offline["selected"])
    value = load_value(offline["value"], policy.obs_dim).to(device)
    if cfg.refit_value and cfg.reward_scale != 1.0:
        scale_value(value, cfg.reward_scale)
    robot = tasks.robot_name(env_id, (offline.get("dataset") or {}).get("dataset_id", ""))
    agent = OnlineAgent(policy, selected, value, cfg, robot)
    if cfg.rollout_steps < cfg.num_envs:
        raise ValueError(f"online.rollout_steps ({cfg.rollout_steps}) must be >= online.num_envs "
                         f"({cfg.num_envs})")
    saved = run.load_checkpoint(CHECKPOINT)
    if saved is not None and saved.get("done") and saved["counters"]["env_steps"] >= cfg.env_steps:
        _check_resumable(saved, dataclasses.asdict(cfg), selected)
        return saved["summary"]
    vec = envs.make_vector_env(env, cfg.num_envs, policy.history)
    obs, _ = vec.reset(seed=seeds.online_env_seeds(seed, cfg.num_envs))
    envs.capture_env_state(vec)  # fail now, not at the first checkpoint, if the env cannot be saved
    eval_seed = seeds.online_eval_seed(seed)  # the same eval episodes every time: a less noisy curve
    bundle = {"selected": selected, "dataset": offline.get("dataset"), "env_id": env_id}

    def evaluation() -> dict[str, float]:
        if cfg.eval_episodes <= 0:  # evaluation switched off: the curve has training episodes only
            return {}
        returns, lengths = envs.run_episodes(agent.act, env, cfg.eval_episodes, eval_seed, policy.history)
        score = float(np.mean(normalized_score(returns, ref)))
        record_score(trainer.history, score)
        return {"eval_return": float(returns.mean()), "eval_score": score, "eval_return_std": float(returns.std()),
                "eval_length": float(lengths.mean())}

    trainer = PPOTrainer(cfg, agent, vec, obs, bundle, evaluation, ref)
    ctx = PhaseContext(run, Config(seed=seed, device=str(device), online=cfg), None, torch.device(device), progress)
    try:
        with run.timer(PHASE):
            if saved is None:  # a fresh start: its own seed, and the evaluation before any update
                seed_everything(seeds.phase_seed(seed, PHASE))
                run.drop_metrics(PHASE)  # rows of a run killed before its first checkpoint
                first = evaluation()
                if first:
                    run.log(PHASE, 0, **first)
            done = train(ctx, trainer)
        history = trainer.history
        summary = {"env_id": env_id, "selected": selected, "env_steps": trainer.counters["env_steps"],
                   "score_start": history["score_start"], "score_final": history["last_score"],
                   "score_best": history["best_score"] if history["last_score"] is not None else None,
                   "ref_scores": list(ref), "lr_actor": agent.lr_actor, "eval_episodes": cfg.eval_episodes,
                   "num_envs": cfg.num_envs, "device": str(policy.obs_mean.device),
                   "kernel_backend": ops.backend(device),
                   "rollout_steps_per_s": history["collect_steps"] / max(history["collect_s"], 1e-9)}
        run.save_checkpoint(CHECKPOINT, {**trainer.state_dict(True, summary), **snapshot(trainer.generator),
                                         "step": done})
        run.update_summary(online=summary)
    finally:
        vec.close()
    return summary


def record_score(history: dict, score: float) -> None:
    """An evaluation's score into a curve's history: the last, the best, and the first one seen."""
    history["last_score"], history["best_score"] = score, max(history["best_score"], score)
    if history["score_start"] is None:
        history["score_start"] = score


def _check_resumable(saved: dict, config: dict, selected: int) -> None:
    """Refuse a checkpoint made under another online config (the result would be neither run)."""
    defaults = dataclasses.asdict(OnlineConfig())  # a field the checkpoint predates: it ran with the default
    changed = {k: (saved["config"].get(k, defaults.get(k)), v) for k, v in config.items()
               if k not in ("env_steps", "eval_every", "checkpoint_every")
               and saved["config"].get(k, defaults.get(k)) != v}
    if changed or int(saved["selected"]) != selected:
        details = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changed.items()) or "selected sub-policy"
        raise ValueError(f"checkpoints/online.pt was made with another online config ({details}); resume "
                         "with the run's own config.yaml, or start a new run directory")
