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
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from uepo import seeds
from uepo.config import Config, ImproveConfig, accept_z_of
from uepo.data import OfflineData
from uepo.phases import BatchSampler, PhaseContext, restore, sample_indices, snapshot
from uepo.phases.critics import Critics
from uepo.phases.dynamics import Dynamics
from uepo.phases.runner import Trainer, train
from uepo.policy import MultiSeedPolicy
from uepo.runs import seed_everything
from uepo.seeds import AMQ_NOISE_SEED, phase_seed
from uepo.tasks import family

PHASE = "improve"
STD_WARMUP_LR = 1e-3

ActFn = Callable[[Tensor], Tensor]  # raw histories (B, T_o, d_s) -> actions (B, d_a)


@dataclass
class Improved:
    policy: MultiSeedPolicy  # heads = the accepted (best AM-Q) heads
    selected: int
    amq_raw: list[float]  # Ĵ of each raw μ^i (heads at initialisation)
    amq_best: list[float]  # Ĵ of each accepted sub-policy
    selection: dict = field(default_factory=dict)  # how i* was chosen, and every warning on the way


@dataclass(frozen=True)
class Support:
    """What the data supports, for model rollouts (SPEC §3D): predicted states are clipped to the data's
    range widened by a margin, a row stops where the ensemble disagrees more than on real pairs, and Q
    is bounded by what a discounted return on this data can be."""

    obs_low: Tensor  # (d_s,)
    obs_high: Tensor  # (d_s,)
    disagreement: float  # rows stop above this (inf: never)
    q_low: float  # Q_τ is clipped to [q_low, q_high]: the range of a discounted return on this data
    q_high: float
    q_floor: float = 0.0  # what a row counts after it left the support: the lowest Q_τ of the data's pairs

    @classmethod
    def of(cls, data, dynamics: Dynamics, critics: Critics, gamma: float, margin: float,
           factor: float) -> Support:
        """The support of ``data`` for rollouts in ``dynamics``: states within the data's range ± ``margin``
        of it, disagreement up to ``factor`` × T̂'s largest on real hold-out pairs."""
        lo, hi = data.obs.amin(0), data.obs.amax(0)
        pad = margin * (hi - lo)
        r_lo, r_hi = float(data.rewards.min()), float(data.rewards.max())
        # a return is a discounted sum of rewards, followed by zeros after a termination
        q_low, q_high = min(0.0, r_lo) / (1 - gamma), max(0.0, r_hi) / (1 - gamma)
        with torch.no_grad():
            obs_n = data.normalize(data.obs)
            q_data = torch.cat([critics.q_value(obs_n[s:s + 8192], data.actions[s:s + 8192])
                                for s in range(0, data.size, 8192)])
        q_floor = min(max(float(q_data.min()), q_low), q_high)
        return cls(lo - pad, hi + pad, factor * dynamics.disagreement_quantile(1.0), q_low, q_high, q_floor)

    @classmethod
    def unbounded(cls, obs_dim: int, device: torch.device | str = "cpu") -> Support:
        inf = torch.full((obs_dim,), math.inf, device=device)
        return cls(-inf, inf, math.inf, -math.inf, math.inf)


@dataclass
class AmQ:
    """One AM-Q evaluation: Ĵ and the numbers that say whether it can be trusted."""

    value: float  # Ĵ: mean of Q_τ (clipped to the support's bounds) over start states × horizon
    unclipped: float  # the same mean of the raw Q_τ
    support_fraction: float  # pairs inside the support and alive / (start states × horizon)
    clip_fraction: float  # share of the counted Q_τ outside [q_low, q_high]
    plausible: bool  # finite, and the raw mean inside [q_low, q_high]
    left_fraction: float = 0.0  # share of the rows that left the support (the rest ran on or fell)
    row_values: Tensor | None = None  # (rows,) float64: each start state's share of Ĵ (Ĵ = their mean)

    @property
    def standard_error(self) -> float:
        return standard_error(self.row_values)

    def metrics(self, i: int) -> dict[str, float]:
        return {f"amq_{i}": self.value, f"amq_unclipped_{i}": self.unclipped,
                f"amq_support_{i}": self.support_fraction, f"amq_left_{i}": self.left_fraction,
                f"amq_clipped_{i}": self.clip_fraction, f"amq_plausible_{i}": float(self.plausible),
                f"amq_se_{i}": self.standard_error}


def standard_error(rows: Tensor | None) -> float:
    """The standard error of the mean of per-start-state values (nan when unknown)."""
    if rows is None or rows.numel() < 2:
        return math.nan
    return float(rows.std() / math.sqrt(rows.numel()))


def paired_z(rows: Tensor | None, other: Tensor | None) -> float:
    """How many standard errors the mean of ``rows − other`` is above 0: the same start states and model noise
    (common random numbers) make the paired difference far less noisy than either Ĵ. nan when unknown."""
    if rows is None or other is None or rows.shape != other.shape:
        return math.nan
    diff = rows - other
    mean, se = float(diff.mean()), standard_error(diff)
    if se > 0 or math.isnan(se):
        return mean / se
    return math.copysign(math.inf, mean) if mean else 0.0  # identical rows up to a constant


@torch.no_grad()
def am_q(act: ActFn, dynamics: Dynamics, critics: Critics, start_histories: Tensor, horizon: int,
         normalize: Callable[[Tensor], Tensor], support: Support | None = None) -> AmQ:
    """Ĵ = mean Q_τ(s, a) over the pairs visited by ``act`` rolled in T̂ for ``horizon`` steps.

    As in Uni-O4 the mean runs over the visited pairs; a step after a predicted termination counts 0
    (the return after a fall), so a policy that falls early scores lower than one that keeps going.
    A row that leaves the support (the ensemble disagrees more than ``support.disagreement``) stops there
    and counts ``support.q_floor``, the worst value the data shows, to the horizon: the model knows
    nothing past that point, and a policy must not gain by going where the model cannot follow it
    (measured: dropping those rows instead ranked a policy pinned at an action bound above the intact
    one; holding their last Q ranked worst of the rules tried, scripts/amq_support_probe.py). Predicted
    states are clipped to the support's range.
    """
    support = support or Support.unbounded(start_histories.shape[-1], start_histories.device)
    gen = torch.Generator().manual_seed(AMQ_NOISE_SEED)
    hist = start_histories.clone()
    rows = hist.shape[0]
    device = start_histories.device
    alive = torch.ones(rows, dtype=torch.bool, device=device)  # inside the support and not terminated
    left_at = torch.full((rows,), -1, device=device)  # the step a row left the support at
    total = total_raw = 0.0
    inside = clipped = 0
    row_total = torch.zeros(rows, dtype=torch.float64, device=device)
    for t in range(horizon):
        obs = hist[:, -1]
        action = act(hist)
        nxt, _, done, disagreement = dynamics.step_with_disagreement(obs, action, gen)
        leaving = alive & (disagreement > support.disagreement)
        left_at = torch.where(leaving, t, left_at)
        alive = alive & ~leaving
        q_raw = critics.q_value(normalize(obs), action)[alive]
        q = q_raw.clamp(support.q_low, support.q_high)
        row_total[alive] += q.double()
        total, total_raw = total + float(q.sum()), total_raw + float(q_raw.sum())
        inside, clipped = inside + int(alive.sum()), clipped + int((q != q_raw).sum())
        alive = alive & ~done
        if not alive.any():
            break
        nxt = torch.maximum(torch.minimum(nxt, support.obs_high), support.obs_low)
        nxt = torch.where(alive[:, None], nxt, obs)  # stopped rows stay put (finite inputs)
        hist = torch.cat([hist[:, 1:], nxt[:, None]], dim=1)
    # every row counts `horizon` pairs: inside the support, then 0 after a fall, or the floor after leaving
    after_leaving = int((horizon - left_at[left_at >= 0]).sum())
    row_total += torch.where(left_at >= 0, (horizon - left_at).double() * support.q_floor, 0.0)
    total, total_raw = total + support.q_floor * after_leaving, total_raw + support.q_floor * after_leaving
    pairs = rows * horizon
    value, raw = total / pairs, total_raw / pairs
    plausible = math.isfinite(raw) and support.q_low <= raw <= support.q_high
    return AmQ(value, raw, inside / pairs, clipped / max(1, inside), plausible, float((left_at >= 0).double().mean()),
               row_total / horizon)


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


def amq_setting(data: OfflineData, dynamics: Dynamics, critics: Critics, cfg: Config) -> tuple[Support, int]:
    """AM-Q's support (state clip, disagreement stop, Q bounds) and horizon H_ope for a run's config."""
    imp = cfg.improve
    support = Support.of(data, dynamics, critics, cfg.critics.gamma, imp.ope_state_margin, imp.ope_support_factor)
    return support, imp.ope_horizon or family(data.robot).ope_horizon


def amq_scorer(policy: MultiSeedPolicy, dynamics: Dynamics, critics: Critics, data: OfflineData, horizon: int,
               support: Support) -> Callable[[int, nn.Module, Tensor], AmQ]:
    """(i, head, start histories) -> AM-Q of sub-policy i acting with ``head``: the gate and the
    held-out selection score with it."""
    def score(i: int, head: nn.Module, starts: Tensor) -> AmQ:
        return am_q(head_act_fn(policy, head, i), dynamics, critics, starts, horizon, data.normalize, support)
    return score


def start_sampler_of(data: OfflineData, cfg: ImproveConfig) -> BatchSampler:
    """AM-Q's start states: uniform over the data, or partly episodes' first steps (``ope_start_fraction``)."""
    return BatchSampler(data, cfg.ope_start_fraction, cfg.ope_start_steps)  # fraction 0: sample_indices


def held_out_starts(data: OfflineData, cfg: ImproveConfig, run_seed: int, history: int) -> Tensor:
    """``validate_states`` start histories drawn as the gate's are, from a stream of their own."""
    gen = torch.Generator().manual_seed(seeds.validation_seed(run_seed))
    return data.histories(start_sampler_of(data, cfg)(min(cfg.validate_states, data.size), gen), history)


def warn(message: str) -> str:
    """Print a warning that a person must see (the run goes on) and return it for summary.json."""
    print(f"uepo: WARNING: {message}", file=sys.stderr)
    return message


def select_sub_policy(amq_best: list[float], plausible: list[bool], warm_nll: list[float]) -> dict:
    """i* = argmax Ĵ^i over the sub-policies whose Ĵ is plausible; with none, the best imitator."""
    candidates = [i for i in range(len(amq_best)) if plausible[i]]
    if candidates:
        best = max(candidates, key=lambda i: amq_best[i])
        return {"selected": best, "method": "amq", "warnings": []}
    best = min(range(len(warm_nll)), key=lambda i: warm_nll[i])
    message = warn(f"no sub-policy has a plausible AM-Q (values {[round(v, 3) for v in amq_best]}): the model "
                   f"rollouts cannot rank them, so sub-policy {best} (lowest NLL of the dataset's actions) is "
                   "selected. Check the dynamics phase (holdout errors in metrics.csv) before trusting this run.")
    return {"selected": best, "method": "imitation-fallback", "warnings": [message]}


def gain_penalized(amq_raw: list[float], raw_ok: list[bool], raw_rows: list[Tensor | None], best: dict,
                   penalty: float, paired: bool) -> tuple[list[float], list[bool], list[Tensor | None]]:
    """``--selection amq-gain-penalty``'s ranking: Ĵ_raw − p·(Ĵ − Ĵ_raw) per sub-policy, plausible where both are.

    BPPO's advantage and AM-Q share Q_τ, so the head whose Ĵ rose most under the gate is the one most
    likely to exploit Q_τ's errors (docs/RESULTS.md 0d–0f); p = −1 gives back plain AM-Q. Per-start-state
    rows (for the runner-up's paired z) only where raw and accepted Ĵ came from the same states."""
    ranking = [r - penalty * (b - r) for r, b in zip(amq_raw, best["amq"], strict=True)]
    ok = [a and b for a, b in zip(raw_ok, best["plausible"], strict=True)]
    rows = [(1 + penalty) * r - penalty * b if paired and r is not None and b is not None else None
            for r, b in zip(raw_rows, best["rows"], strict=True)]
    return ranking, ok, rows


def separation(amq_best: list[float], rows: list[Tensor | None], selected: int) -> dict:
    """How far AM-Q puts the selected sub-policy above the runner-up: Ĵ's standard errors and the paired z of
    the two (below ~2 the offline ranking of the pair is within AM-Q's start-state noise)."""
    def finite(x: float) -> float | None:  # summary.json is strict JSON
        return x if math.isfinite(x) else None

    se = [finite(standard_error(r)) for r in rows]
    others = [i for i in range(len(amq_best)) if i != selected]
    if not others:
        return {"amq_se": se}
    runner_up = max(others, key=lambda i: amq_best[i])
    return {"amq_se": se, "runner_up": runner_up, "runner_up_z": finite(paired_z(rows[selected], rows[runner_up]))}


class BPPOTrainer(Trainer):
    """BPPO of sub-policy ``index`` as the loop sees it: one step = one clipped-ratio update against π_old;
    every ``ope_every`` steps AM-Q scores the head, a better plausible Ĵ is accepted (π_old ← π) and the
    clip decays. ``best`` holds every sub-policy's accepted heads and Ĵ (shared, saved with each checkpoint)."""

    def __init__(self, ctx: PhaseContext, policy: MultiSeedPolicy, index: int, best: dict, critics: Critics,
                 obs_n: Tensor, base: Tensor, evaluate: Callable[[int, nn.Module], AmQ], gen: torch.Generator,
                 accept_z: float):
        cfg = ctx.cfg.improve
        self.cfg, self.index, self.best, self.critics, self.obs_n, self.base = cfg, index, best, critics, obs_n, base
        self.evaluate = evaluate
        self.phase, self.label = PHASE, f"D BPPO sub-policy {index}"
        # in a torchrun run each rank trains its own sub-policies and keeps its own progress checkpoint
        self.checkpoint = f"{PHASE}_progress" + (f"_rank{ctx.world.rank}" if ctx.world.parallel else "")
        self.data_parallel = False
        self.total, self.log_every, self.step_offset = cfg.steps, cfg.ope_every, index * cfg.steps
        self.generator = gen
        self.head = policy.heads[index]
        self.head.load_state_dict(best["heads"][index])
        self.old = copy.deepcopy(self.head).requires_grad_(False)
        self.opt = torch.optim.Adam(self.head.parameters(), lr=cfg.lr)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: max(0.0, 1 - s / cfg.steps))
        self.clip, self.implausible = cfg.clip, 0
        self.accept_z = accept_z  # the run's margin, accept_z_of(ctx.cfg): -1 resolved by policy kind
        self.last: AmQ | None = None

    def step(self, step: int) -> dict[str, Tensor]:
        loss = bppo_step(self.head, self.old, self.opt, self.critics, self.obs_n, self.base, self.cfg, self.clip,
                         self.generator)
        self.sched.step()
        return {f"BPPO loss of sub-policy {self.index}": loss}

    def metrics(self, losses: dict[str, Tensor]) -> dict[str, float]:
        """AM-Q of the current head; accepted when plausible and better than the best so far."""
        i, best = self.index, self.best
        j = self.last = self.evaluate(i, self.head)
        gain_z = paired_z(j.row_values, best["rows"][i])  # nan when the accepted head's rows are unknown
        better = j.value > best["amq"][i] and not gain_z < self.accept_z
        accepted = j.plausible and (not best["plausible"][i] or better)
        self.implausible += not j.plausible
        if accepted:
            best["amq"][i], best["plausible"][i], best["rows"][i] = j.value, True, j.row_values
            self.old.load_state_dict(self.head.state_dict())
            best["heads"][i] = copy.deepcopy(self.head.state_dict())
        self.clip *= self.cfg.clip_decay
        loss = next(iter(losses.values()))
        return {**j.metrics(i), f"amq_gain_z_{i}": gain_z, f"accepted_{i}": float(accepted), f"loss_{i}": float(loss)}

    def postfix(self, row: dict[str, float]) -> dict[str, str]:
        return {"amq": f"{row[f'amq_{self.index}']:.4g}", "best": f"{self.best['amq'][self.index]:.4g}"}

    def should_checkpoint(self, done: int) -> bool:
        return self.should_log(done)  # after every AM-Q evaluation, the last one included

    def resumes(self, state: dict) -> bool:
        return state["seed"] == self.index

    def state_dict(self) -> dict:
        return {"head": self.head.state_dict(), "old": self.old.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "seed": self.index, "amq_best": self.best["amq"],
                "best_plausible": self.best["plausible"], "best_heads": self.best["heads"],
                "best_rows": self.best["rows"], "clip": self.clip,
                "implausible": self.implausible}

    def load_state_dict(self, state: dict) -> None:
        self.head.load_state_dict(state["head"])
        self.old.load_state_dict(state["old"])
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.clip, self.implausible = state["clip"], state.get("implausible", 0)


def improve(ctx: PhaseContext, pretrained: MultiSeedPolicy, critics: Critics, dynamics: Dynamics) -> Improved:
    cfg, data, run = ctx.cfg.improve, ctx.data, ctx.run
    policy = copy.deepcopy(pretrained)
    n = policy.num_seeds
    done = run.load_checkpoint(PHASE)
    if done is not None:
        policy = MultiSeedPolicy.from_state(done["policy"]).to(ctx.device)
        return Improved(policy, done["selected"], done["amq_raw"], done["amq_best"], done.get("selection", {}))

    seed_everything(phase_seed(ctx.cfg.seed, PHASE))
    gen = ctx.generator(PHASE)
    support, horizon = amq_setting(data, dynamics, critics, ctx.cfg)
    score = amq_scorer(policy, dynamics, critics, data, horizon, support)
    obs_n = data.normalize(data.obs)
    for p in policy.denoiser.parameters():
        p.requires_grad_(False)

    def evaluate(i: int, head: nn.Module) -> AmQ:  # the gate's start states
        return score(i, head, start_hist)

    cached = run.load_checkpoint(f"{PHASE}_cache")
    if cached is None:
        run.drop_metrics(PHASE)
        run.log(PHASE, 0, amq_horizon=horizon, amq_support_disagreement=support.disagreement,
                amq_q_low=support.q_low, amq_q_high=support.q_high, amq_q_floor=support.q_floor)
        base_all = cache_base_actions(policy, data.cond(torch.arange(data.size), policy.history))
        ope_idx = start_sampler_of(data, cfg)(min(cfg.ope_states, data.size), gen)
        warm_nll = []
        for i in range(n):
            warm_nll.append(warm_start_std(policy.heads[i], obs_n, base_all[:, i], data.actions,
                                           cfg.std_warmup_steps, cfg.batch_size, gen))
            run.log(PHASE, 0, **{f"std_warmup_nll_{i}": warm_nll[i]})
        start_hist = data.histories(ope_idx, policy.history)
        raw = [evaluate(i, policy.heads[i]) for i in range(n)]
        for i, r in enumerate(raw):
            run.log(PHASE, 0, **r.metrics(i))
        amq_raw, raw_ok, raw_unclipped = [r.value for r in raw], [r.plausible for r in raw], [r.unclipped for r in raw]
        raw_rows = [r.row_values for r in raw]
        run.save_checkpoint(f"{PHASE}_cache", {
            **snapshot(gen), "base": base_all, "ope_idx": ope_idx, "heads": [h.state_dict() for h in policy.heads],
            "amq_raw": amq_raw, "amq_raw_plausible": raw_ok, "amq_raw_unclipped": raw_unclipped,
            "amq_raw_rows": raw_rows, "warm_nll": warm_nll})
    else:
        base_all, ope_idx, amq_raw = cached["base"].to(ctx.device), cached["ope_idx"], cached["amq_raw"]
        # a cache written before plausibility was checked: its values are taken as they are
        raw_ok, warm_nll = cached.get("amq_raw_plausible", [True] * n), cached.get("warm_nll", [0.0] * n)
        raw_unclipped = cached.get("amq_raw_unclipped", amq_raw)
        raw_rows = cached.get("amq_raw_rows", [None] * n)
        for h, s in zip(policy.heads, cached["heads"], strict=True):
            h.load_state_dict(s)
        restore(cached, gen)
    start_hist = data.histories(ope_idx, policy.history)
    warnings = [warn(f"AM-Q of raw sub-policy {i} is implausible ({raw_unclipped[i]:.4g} before clipping, outside the "
                     f"[{support.q_low:.4g}, {support.q_high:.4g}] a discounted return on this data can take); "
                     "it is not selected on") for i in range(n) if not raw_ok[i]]

    best = {"heads": [copy.deepcopy(h.state_dict()) for h in policy.heads], "amq": list(amq_raw),
            "plausible": list(raw_ok), "rows": list(raw_rows)}
    world, first_seed, accept_z = ctx.world, 0, accept_z_of(ctx.cfg)
    progress = run.load_checkpoint(f"{PHASE}_progress" + (f"_rank{world.rank}" if world.parallel else ""))
    if progress is not None:  # sub-policies before the checkpoint's are done: their best is in it
        first_seed = progress["seed"]
        best.update(heads=progress["best_heads"], amq=progress["amq_best"],
                    plausible=progress.get("best_plausible", [True] * n), rows=progress.get("best_rows", [None] * n))
    run.collect_rows()  # in a torchrun run: this rank's BPPO rows go to rank 0 with the results
    for i in (i for i in range(first_seed, n) if world.owns(i)):
        stream = gen
        if world.parallel:  # a sub-policy's own streams, whichever rank trains it
            seed_everything(seeds.improve_sub_policy_seed(ctx.cfg.seed, i))
            stream = torch.Generator().manual_seed(seeds.improve_sub_policy_seed(ctx.cfg.seed, i))
        trainer = BPPOTrainer(ctx, policy, i, best, critics, obs_n, base_all[:, i], evaluate, stream, accept_z)
        train(ctx, trainer)
        if trainer.implausible:
            warnings.append(warn(f"BPPO of sub-policy {i}: {trainer.implausible} AM-Q evaluations were "
                                 f"implausible and were not accepted (metrics.csv: improve, amq_unclipped_{i})"))
    if world.parallel:
        warnings = gather_sub_policies(ctx, best, warnings)
    validation = {}
    if cfg.validate_states > 0:
        held_out = held_out_starts(data, cfg, ctx.cfg.seed, policy.history)
        validation = {"states": held_out.shape[0],
                      "gate": fresh_amq(policy, best, lambda i, head: score(i, head, held_out))}
    for h, s in zip(policy.heads, best["heads"], strict=True):
        h.load_state_dict(s)
    amq_best, best_ok = best["amq"], best["plausible"]
    ranking, ranking_ok, ranking_rows = amq_best, best_ok, best["rows"]
    if cfg.selection == "amq-gain-penalty":
        ranking, ranking_ok, ranking_rows = gain_penalized(amq_raw, raw_ok, raw_rows, best, cfg.gain_penalty,
                                                           paired=not validation)
    selection = select_sub_policy(ranking, ranking_ok, warm_nll)
    selection["warnings"] = warnings + selection["warnings"]
    if validation:
        selection["validation"] = validation
    if cfg.selection == "amq-gain-penalty":
        selection.update(ranking=ranking, gain_penalty=cfg.gain_penalty,
                         method="amq-gain-penalty" if selection["method"] == "amq" else selection["method"])
    selection.update(separation(ranking, ranking_rows, selection["selected"]))
    selection.update(accept_z=accept_z, amq_plausible=best_ok, amq_raw_plausible=raw_ok, support={
        "disagreement": support.disagreement, "q_low": support.q_low, "q_high": support.q_high,
        "q_floor": support.q_floor})
    selected = selection["selected"]
    run.log(PHASE, n * cfg.steps, selected=selected, **{f"amq_best_{i}": j for i, j in enumerate(amq_best)})
    run.save_checkpoint(PHASE, {"policy": policy.state(), "selected": selected, "amq_raw": amq_raw,
                                "amq_best": amq_best, "selection": selection})
    return Improved(policy, selected, amq_raw, amq_best, selection)


def fresh_amq(policy: MultiSeedPolicy, best: dict, score: Callable[[int, nn.Module], AmQ]) -> dict:
    """Ĵ of each sub-policy's accepted head, re-estimated by ``score`` on start states the gate never saw.

    The gate accepts a head whenever Ĵ rises on its own start states, so after several tries a
    sub-policy's accepted Ĵ is the max of noisy estimates and overstates it (the winner's curse), the
    more so the more often it was accepted. Selecting on fresh states removes that bias from the ranking.
    ``best``'s Ĵ, plausibility and rows are replaced in place by the fresh ones; returns the gate's."""
    gate = {"amq": list(best["amq"]), "plausible": list(best["plausible"])}
    for i, state in enumerate(best["heads"]):
        head = copy.deepcopy(policy.heads[i])
        head.load_state_dict(state)
        fresh = score(i, head)
        best["amq"][i], best["plausible"][i], best["rows"][i] = fresh.value, fresh.plausible, fresh.row_values
    return gate


def gather_sub_policies(ctx: PhaseContext, best: dict, warnings: list[str]) -> list[str]:
    """Every rank's trained sub-policies (accepted heads, Ĵ, plausibility), their warnings and metric rows,
    merged on every rank; rank 0 writes the other ranks' rows."""
    world, n = ctx.world, len(best["amq"])
    mine = {i: (best["heads"][i], best["amq"][i], best["plausible"][i], best["rows"][i]) for i in range(n)
            if world.owns(i)}
    parts = world.gather_objects((mine, warnings, ctx.run.take_pending_rows()))
    merged: list[str] = []
    for owned, rank_warnings, rows in parts:
        for i, (heads, amq, ok, amq_rows) in owned.items():
            best["heads"][i], best["amq"][i], best["plausible"][i], best["rows"][i] = heads, amq, ok, amq_rows
        merged += [w for w in rank_warnings if w not in merged]
        ctx.run.log_rows(rows)
    return merged


def bppo_step(head: nn.Module, old: nn.Module, opt: torch.optim.Optimizer, critics: Critics, obs_n: Tensor,
              base: Tensor, cfg, clip: float, gen: torch.Generator) -> Tensor:
    """One clipped-ratio update of a head against π_old on a batch of dataset states; returns the loss."""
    idx = sample_indices(obs_n.shape[0], cfg.batch_size, gen)
    s, b = obs_n[idx], base[idx]
    with torch.no_grad():
        old_dist = old.distribution(s, b)
        a = old_dist.sample().clamp(-1, 1)
        old_logp = old_dist.log_prob(a)
        adv = critics.q_value(s, a) - critics.v(s)
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    dist = head.distribution(s, b)
    ratio = (dist.log_prob(a) - old_logp).exp()
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    loss = -surrogate.mean() - cfg.entropy * dist.entropy().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if torch.isfinite(loss):
        nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
        opt.step()
    return loss.detach()
