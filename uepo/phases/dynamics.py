"""Phase C: dynamics ensemble with diffusion augmentation (SPEC §3C).

1. Fit T̂0 on the data: Gaussian NLL of (Δs, r), one bootstrap resample per member, early stopping
   on a real hold-out set, elites by hold-out error.
2. Generate D_diff (up to ``augment_ratio`` × the dataset): start states from the data, a sub-policy's
   chunk (or a fresh seed's, with probability ``fresh_seed_prob``) rolled open-loop through T̂0 with
   a random elite per step and the task's termination function; a rollout is kept while the
   ensemble disagreement D_t stays below ε_KL (the ``disagreement_quantile`` of D on real pairs).
3. Refit T̂ from scratch on D ∪ D_diff (augmented samples weighted ``augment_weight``), hold-out on
   real data only. Logs the hold-out NLL and error of T̂0 vs T̂ and the keep-rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from uepo.diffusion import SeedBank, multiseed_sample
from uepo.nets import DynamicsEnsemble
from uepo.phases import PhaseContext, restore, sample_indices, snapshot
from uepo.phases.runner import Trainer, train
from uepo.policy import MultiSeedPolicy
from uepo.runs import seed_everything
from uepo.seeds import augmentation_bank_seed, phase_seed
from uepo.tasks import TerminationFn, family, termination_fn

PHASE = "dynamics"
LOGVAR_BOUND_PENALTY = 0.01  # pulls the learned log-variance bounds together (MBPO/Uni-O4)
MAX_HOLDOUT = 5000
SUPPORT_QUANTILES_LOGGED = (0.9, 0.99)  # of T̂'s disagreement on real hold-out pairs (AM-Q's support)
AUGMENTED_HOLDOUT_TOLERANCE = 0.05  # SPEC §5: T̂'s hold-out error may exceed T̂0's by at most 5 %

@dataclass
class Transitions:
    obs: Tensor
    actions: Tensor
    rewards: Tensor
    next_obs: Tensor
    terminals: Tensor
    weight: Tensor

    @property
    def inputs_targets(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.obs, self.actions, torch.cat([self.next_obs - self.obs, self.rewards[:, None]], -1)

    def __len__(self) -> int:
        return self.obs.shape[0]

    def cat(self, other: Transitions) -> Transitions:
        return Transitions(*(torch.cat([getattr(self, f), getattr(other, f)]) for f in
                             ("obs", "actions", "rewards", "next_obs", "terminals", "weight")))

    def state(self) -> dict:
        return dict(self.__dict__)

    def to(self, device: torch.device) -> Transitions:
        return Transitions(**{k: v.to(device) for k, v in self.__dict__.items()})


@dataclass
class Dynamics:
    model: DynamicsEnsemble  # T̂ (T̂0 when augmentation is off)
    terminal: TerminationFn
    metrics: dict
    holdout_disagreement: Tensor | None = None  # D of T̂ on the real hold-out pairs (N_hold,), sorted

    @torch.no_grad()
    def step(self, obs: Tensor, action: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (next_obs, reward, done) from a random elite per row."""
        nxt, reward, done, _ = self.step_with_disagreement(obs, action, generator)
        return nxt, reward, done

    @torch.no_grad()
    def step_with_disagreement(self, obs: Tensor, action: Tensor,
                               generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``step`` plus the ensemble's disagreement D at (obs, action), from the same forward pass."""
        mean_n, logvar = self.model(obs, action)
        mean_n, var_n = mean_n[self.model.elites], logvar[self.model.elites].exp()
        disagreement = _disagreement(mean_n, var_n)
        mean = mean_n * self.model.out_std + self.model.out_mean
        var = var_n * self.model.out_std**2
        pick = torch.randint(0, mean.shape[0], (obs.shape[0],), generator=generator).to(obs.device)
        rows = torch.arange(obs.shape[0], device=obs.device)
        noise = torch.randn(mean.shape[1:], generator=generator).to(obs.device)
        sample = mean[pick, rows] + var[pick, rows].sqrt() * noise
        nxt = obs + sample[:, :-1]
        return nxt, sample[:, -1], self.terminal(obs, action, nxt), disagreement

    def disagreement_quantile(self, q: float) -> float:
        """The q-quantile of T̂'s disagreement on real hold-out pairs (1: their maximum; inf when unknown)."""
        if self.holdout_disagreement is None:
            return math.inf
        return float(torch.quantile(self.holdout_disagreement.double(), q))


def _disagreement(mean: Tensor, var: Tensor) -> Tensor:
    """Mean over members of KL(N_e || moment-matched mixture), summed over output dims: (E, N, d) -> (N,).
    KL is invariant to a common affine map, so normalised and raw units give the same value."""
    mix_mean = mean.mean(0)
    mix_var = (var + mean**2).mean(0) - mix_mean**2
    mix_var = mix_var.clamp_min(1e-8)
    kl = 0.5 * (torch.log(mix_var / var) + (var + (mean - mix_mean) ** 2) / mix_var - 1).sum(-1)
    return kl.mean(0)


def ensemble_disagreement(model: DynamicsEnsemble, obs: Tensor, action: Tensor) -> Tensor:
    """D = mean over elites of KL(N_e || moment-matched mixture), summed over output dims, (N,)."""
    mean, logvar = model(obs, action)
    return _disagreement(mean[model.elites], logvar[model.elites].exp())


@torch.no_grad()
def gaussian_nll_raw(model: DynamicsEnsemble, obs: Tensor, action: Tensor, target: Tensor) -> float:
    """Mean over elites of the per-dimension Gaussian NLL of raw targets (comparable across scalers)."""
    mean, var = model.predict(obs, action)
    nll = 0.5 * ((target - mean) ** 2 / var + var.log() + math.log(2 * math.pi))
    return float(nll.mean())


@torch.no_grad()
def holdout_error(model: DynamicsEnsemble, obs: Tensor, action: Tensor, target: Tensor,
                  scale: Tensor) -> float:
    """Mean over elites of the squared error of the mean, per dimension in units of ``scale``."""
    mean, _ = model.predict(obs, action)
    return float((((target - mean) / scale) ** 2).mean())


class EnsembleTrainer(Trainer):
    """One fit of the ensemble (T̂0 on real data, T̂ on real + generated) as the loop sees it: one step =
    one epoch over bootstrap resamples; each member keeps its best weights by hold-out error, and the
    fit stops after ``patience`` epochs in which no member improved by 1 %."""

    def __init__(self, ctx: PhaseContext, stage: str, train_set: Transitions, holdout: Transitions,
                 gen: torch.Generator):
        cfg, data = ctx.cfg.dynamics, ctx.data
        self.cfg, self.stage, self.train_set, self.holdout = cfg, stage, train_set, holdout
        self.phase, self.checkpoint, self.label = PHASE, f"{PHASE}_{stage}_progress", f"C dynamics {stage}"
        self.total, self.checkpoint_every, self.key_prefix = cfg.max_epochs, cfg.checkpoint_every, f"{stage}_"
        self.generator = gen  # the phase's generator, shared by its stages in order
        self.world = ctx.world
        hidden = cfg.hidden or family(data.robot).dynamics_hidden
        model = DynamicsEnsemble(data.obs_dim, data.action_dim, cfg.ensemble, hidden, cfg.layers, cfg.elites)
        self.model = model.to(ctx.device)
        obs, act, tgt = train_set.inputs_targets
        self.model.set_scaler(torch.cat([obs, act], -1), tgt)
        decay = [p for n, p in self.model.named_parameters() if n.endswith("weight")]
        rest = [p for n, p in self.model.named_parameters() if not n.endswith("weight")]
        self.opt = torch.optim.Adam([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest}],
                                    lr=cfg.lr)
        n = len(train_set)
        self.boot = torch.randint(0, n, (cfg.ensemble, n), generator=gen)  # one bootstrap resample per member
        self.best = torch.full((cfg.ensemble,), math.inf)  # each member's best hold-out MSE (on the CPU)
        self.best_state = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.since_improved = 0
        updates = math.ceil(n / cfg.batch_size)
        self.updates = min(updates, cfg.max_updates_per_epoch) if cfg.max_updates_per_epoch > 0 else updates
        self.last_mse = torch.zeros(cfg.ensemble)

    def step(self, step: int) -> dict[str, Tensor]:
        cfg, (obs, act, tgt) = self.cfg, self.train_set.inputs_targets
        order = torch.argsort(torch.rand(cfg.ensemble, len(self.train_set), generator=self.generator), dim=1)
        total = torch.zeros(())
        for u in range(self.updates):
            cols = order[:, u * cfg.batch_size:(u + 1) * cfg.batch_size]
            rows = torch.gather(self.boot, 1, cols)  # (E, B) indices into the training set
            rows = self.world.shard(rows.T).T  # this rank's columns of the global batch
            loss = self._update(obs[rows], act[rows], tgt[rows], self.train_set.weight[rows])
            total = total + loss.cpu()
        self._keep_best()
        return {f"{self.stage} NLL": total, "last": loss}

    def parallel_modules(self) -> tuple[torch.nn.Module, ...]:
        return (self.model,)

    def _update(self, obs: Tensor, act: Tensor, tgt: Tensor, weight: Tensor) -> Tensor:
        """Gaussian NLL of every member on its own batch, plus the log-variance bound penalty."""
        loss_members = self.model.nll(obs, act, tgt, weight)
        bounds = self.model.max_logvar.sum() - self.model.min_logvar.sum()
        loss = loss_members.sum() + LOGVAR_BOUND_PENALTY * bounds
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def _keep_best(self) -> None:
        """Each member that improved its hold-out MSE by > 1 % keeps its current weights."""
        h_obs, h_act, h_tgt = self.holdout.inputs_targets
        self.last_mse = _member_mse(self.model, h_obs, h_act, h_tgt).cpu()
        improved = self.last_mse < self.best * (1 - 0.01)  # any finite value beats inf
        if bool(improved.any()):
            for k, v in self.model.state_dict().items():
                if k.startswith(("layers.", "head.")):  # per-member weights: keep each member's best
                    mask = improved.to(v.device)
                    self.best_state[k][mask] = v[mask].clone()
                else:
                    self.best_state[k] = v.clone()
            self.best = torch.where(improved, self.last_mse, self.best)
            self.since_improved = 0
        else:
            self.since_improved += 1

    def metrics(self, losses: dict[str, Tensor]) -> dict[str, float]:
        return {f"{self.stage}_train_nll": losses["last"].item() / self.cfg.ensemble,
                f"{self.stage}_holdout_mse": float(self.last_mse.mean())}

    def postfix(self, row: dict[str, float]) -> dict[str, str]:
        return {"holdout_mse": f"{float(self.best.sort().values[: self.cfg.elites].mean()):.4g}"}

    def finished(self, done: int) -> bool:
        return done >= self.cfg.max_epochs or self.since_improved >= self.cfg.patience

    def should_checkpoint(self, done: int) -> bool:
        return done % self.checkpoint_every == 0

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "boot": self.boot,
                "best": self.best, "best_state": self.best_state, "since_improved": self.since_improved}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.boot, self.best = state["boot"], state["best"]
        device = next(self.model.parameters()).device
        self.best_state = {k: v.to(device) for k, v in state["best_state"].items()}
        self.since_improved = state["since_improved"]

    def result(self) -> DynamicsEnsemble:
        """The members' best weights, elites by hold-out error."""
        self.model.load_state_dict(self.best_state)
        self.model.elites.copy_(torch.argsort(self.best)[: self.cfg.elites])
        return self.model.eval()


def _member_mse(model: DynamicsEnsemble, obs: Tensor, action: Tensor, target: Tensor) -> Tensor:
    with torch.no_grad():
        return model.mse(obs, action, target)


def fit_ensemble(ctx: PhaseContext, stage: str, train_set: Transitions, holdout: Transitions,
                 gen: torch.Generator) -> DynamicsEnsemble:
    """Fit a fresh ensemble with bootstrap resamples and per-member early stopping (resumable per epoch)."""
    trainer = EnsembleTrainer(ctx, stage, train_set, holdout, gen)
    train(ctx, trainer)
    return trainer.result()


@torch.no_grad()
def augment(ctx: PhaseContext, model: DynamicsEnsemble, policy: MultiSeedPolicy, terminal: TerminationFn,
            threshold: float, gen: torch.Generator) -> tuple[Transitions, dict]:
    """Roll diffusion chunks open-loop through T̂0 and keep the low-disagreement prefixes."""
    cfg, data = ctx.cfg.dynamics, ctx.data
    target = int(cfg.augment_ratio * data.size)
    T_o = policy.history
    dyn = Dynamics(model, terminal, {})
    parts: list[Transitions] = []
    kept, attempted, batches = 0, 0, 0
    max_batches = max(1, 4 * math.ceil(target / max(1, cfg.augment_batch)))  # stop if almost nothing is kept
    bar = ctx.bar("C augmentation", target)
    while kept < target and batches < max_batches:
        idx = sample_indices(data.size, cfg.augment_batch, gen)
        hist = data.histories(idx, T_o)
        cond = policy.normalize(hist).reshape(idx.shape[0], -1)
        own = policy.base_chunks_from_cond(cond)  # (B, n, H, d_a)
        if policy.kind == "diffusion":  # a fresh bank of seeds, new for every batch
            fresh_bank = SeedBank.draw(policy.num_seeds, len(policy.steps.timesteps), policy.horizon,
                                       policy.action_dim, base_seed=augmentation_bank_seed(ctx.cfg.seed, batches),
                                       temperature=policy.seed_temperature, device=ctx.device)
            fresh, _ = multiseed_sample(policy.denoiser, cond, policy.steps, fresh_bank, policy.eta,
                                        policy.tau)
        else:  # Gaussian members: a fresh draw from a random member's Gaussian
            means, log_std = policy.denoiser(cond)
            fresh = (means + log_std.exp() * ctx.randn(means.shape, gen)).clamp(-1, 1)[:, :, None]
        member = ctx.randint(policy.num_seeds, (idx.shape[0],), gen)
        use_fresh = torch.rand(idx.shape[0], generator=gen).to(ctx.device) < cfg.fresh_seed_prob
        rows = torch.arange(idx.shape[0], device=ctx.device)
        chunks = torch.where(use_fresh[:, None, None], fresh[rows, member], own[rows, member])
        obs = data.obs[idx]
        alive = torch.ones(idx.shape[0], dtype=torch.bool, device=ctx.device)
        for h in range(chunks.shape[1]):
            act = chunks[:, h]
            disagreement = ensemble_disagreement(model, obs, act)
            alive = alive & (disagreement < threshold)
            nxt, rew, done = dyn.step(obs, act, gen)
            attempted += idx.shape[0]
            if alive.any():
                sel = alive
                parts.append(Transitions(obs[sel], act[sel], rew[sel], nxt[sel], done[sel].float(),
                                         torch.full((int(sel.sum()),), cfg.augment_weight, device=ctx.device)))
                kept += int(sel.sum())
                bar.update(int(sel.sum()))
            alive = alive & ~done
            if not alive.any():
                break
            obs = nxt
        batches += 1
    bar.close()
    if parts:
        out = parts[0]
        for p in parts[1:]:
            out = out.cat(p)
    else:
        empty, none = data.obs[:0], data.rewards[:0]
        out = Transitions(empty, data.actions[:0], none, empty, none, none)
    if len(out) > target:
        out = Transitions(*(getattr(out, f)[:target] for f in
                            ("obs", "actions", "rewards", "next_obs", "terminals", "weight")))
    return out, {"keep_rate": kept / max(1, attempted), "augmented": len(out)}


def augmentation_warnings(metrics: dict) -> list[str]:
    """SPEC §5's check on phase C: the refit on real + generated data must not predict real hold-out
    transitions worse than T̂0 by more than 5 % (AM-Q and BPPO's gate both use T̂)."""
    t0, t = metrics.get("T0_holdout_error"), metrics.get("T_holdout_error")
    if t0 is None or t is None or not t > (1 + AUGMENTED_HOLDOUT_TOLERANCE) * t0:
        return []
    return [f"T̂ (refit on real + diffusion-generated data) predicts the real hold-out transitions "
            f"{100 * (t / t0 - 1):.0f} % worse than T̂0 fitted on real data alone ({t:.4g} vs {t0:.4g}; SPEC allows "
            f"{100 * AUGMENTED_HOLDOUT_TOLERANCE:.0f} %). AM-Q and BPPO's acceptance use T̂: train the ensembles "
            "longer (--dynamics.max_updates_per_epoch, --dynamics.max_epochs) or run --no-augmentation."]


def real_split(ctx: PhaseContext, gen: torch.Generator) -> tuple[Transitions, Transitions]:
    """Phase C's real transitions, (training set, hold-out): the phase generator's first draw, so the
    same split on resume (and in scripts/dynamics_probe.py)."""
    data = ctx.data
    perm = torch.randperm(data.size, generator=gen)
    n_hold = min(MAX_HOLDOUT, max(1, int(ctx.cfg.dynamics.holdout_fraction * data.size)))

    def real(idx: Tensor) -> Transitions:
        return Transitions(data.obs[idx], data.actions[idx], data.rewards[idx], data.next_obs[idx],
                           data.terminals[idx], torch.ones(idx.shape[0], device=ctx.device))
    return real(perm[n_hold:]), real(perm[:n_hold])


def train_dynamics(ctx: PhaseContext, policy: MultiSeedPolicy) -> Dynamics:
    cfg, data, run = ctx.cfg.dynamics, ctx.data, ctx.run
    terminal = termination_fn(data.robot)
    hidden = cfg.hidden or family(data.robot).dynamics_hidden

    def build() -> DynamicsEnsemble:
        model = DynamicsEnsemble(data.obs_dim, data.action_dim, cfg.ensemble, hidden, cfg.layers, cfg.elites)
        return model.to(ctx.device)

    def finished(model: DynamicsEnsemble, metrics: dict) -> Dynamics:
        with torch.no_grad():
            support = ensemble_disagreement(model, holdout.obs, holdout.actions).sort().values
        return Dynamics(model.eval(), terminal, metrics, support)

    gen = ctx.generator(PHASE)
    real_train, holdout = real_split(ctx, gen)
    h_obs, h_act, h_tgt = holdout.inputs_targets

    done = run.load_checkpoint(PHASE)
    if done is not None:
        model = build()
        model.load_state_dict(done["model"])
        return finished(model, done["metrics"])

    seed_everything(phase_seed(ctx.cfg.seed, PHASE))

    stage0 = run.load_checkpoint(f"{PHASE}_T0")
    if stage0 is None:
        model0 = fit_ensemble(ctx, "T0", real_train, holdout, gen)
        run.save_checkpoint(f"{PHASE}_T0", snapshot(gen, model=model0))
    else:
        model0 = build()
        restore(stage0, gen, model=model0)
        model0.eval()
    scale = model0.out_std
    metrics = {"T0_holdout_nll": gaussian_nll_raw(model0, h_obs, h_act, h_tgt),
               "T0_holdout_error": holdout_error(model0, h_obs, h_act, h_tgt, scale)}
    model = model0
    if cfg.augmentation:
        with torch.no_grad():
            real_d = ensemble_disagreement(model0, h_obs, h_act)
        threshold = float(torch.quantile(real_d, cfg.disagreement_quantile))
        aug_ckpt = run.load_checkpoint(f"{PHASE}_augmented")
        if aug_ckpt is None:
            aug, aug_metrics = augment(ctx, model0, policy, terminal, threshold, gen)
            run.save_checkpoint(f"{PHASE}_augmented", {**snapshot(gen), "transitions": aug.state(),
                                                      "metrics": aug_metrics})
        else:
            aug, aug_metrics = Transitions(**aug_ckpt["transitions"]).to(ctx.device), aug_ckpt["metrics"]
            restore(aug_ckpt, gen)
        metrics.update(epsilon_kl=threshold, **aug_metrics)
        model = fit_ensemble(ctx, "T", real_train.cat(aug), holdout, gen)
        metrics.update(T_holdout_nll=gaussian_nll_raw(model, h_obs, h_act, h_tgt),
                       T_holdout_error=holdout_error(model, h_obs, h_act, h_tgt, scale))
    result = finished(model, metrics)
    for q in SUPPORT_QUANTILES_LOGGED:
        metrics[f"holdout_disagreement_q{round(100 * q)}"] = result.disagreement_quantile(q)
    run.log(PHASE, 0, **metrics)
    run.save_checkpoint(PHASE, {"model": model.state_dict(), "metrics": metrics})
    return result
