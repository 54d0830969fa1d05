"""Which offline estimate ranks sub-policies as the real env does? Measured on finished runs.

    python scripts/ope_probe.py RUN_DIR [RUN_DIR ...] [--ope_states 64] [--start_steps N] [--json out.json]

For every raw and improved sub-policy of each run (their real-env scores are in summary.json), the
policy's value is estimated by several rules on the run's own critics and T̂, from the same start
states and dynamics noise:

- ``amq``: uepo's AM-Q (phase D's ``am_q``, with its support rules), horizon as in the run;
- ``amq-h500``, ``amq-h1000``: the same, 500 or 1000 model steps;
- ``amq-vote``: AM-Q where a row falls only when most elites, each from its own mean next state,
  predict the fall (the sampled member's state still moves the row);
- ``amq-mean``: AM-Q rolled on the elites' mean prediction (no sampled member, no noise);
- ``mbr``: the model's discounted return, Σ_t γ^t r̂_t + γ^H V(s_H), a fall ends it, leaving the
  support adds γ^t × the data's lowest Q;
- ``q1``: no model at all, the mean Q_τ(s, π(s)) over the start states;
- ``amq-indep``: AM-Q with a second set of phase-A critics, trained as the run's were but from another
  seed (run seed s → 1000·s + 500000; cached under ``--indep_cache``, resumable). BPPO's advantage and the
  gate's AM-Q share Q_τ, so a head can exploit Q_τ's errors and look better to both; Q_τ' has other errors;
- ``real``: AM-Q's criterion with the true dynamics: the real env is set to each start state
  (qpos from the observation, x = 0) and stepped, so the rest of AM-Q is unchanged. Where it ranks
  well and ``amq`` does not, T̂ is what fails; where both fail, the criterion does. ``real-h1000``:
  the same for 1000 steps (the length of an evaluation episode); ``real-return``: the real env's
  discounted return from the start states, Σ_t γ^t r_t + γ^H V(s_H) (``mbr`` on the true dynamics).

``--start_steps N`` draws every rule's start states from episodes' first N steps (1: the reset states an
evaluation episode starts from) instead of uniformly over the data (RESULTS 0o: on HalfCheetah a policy that
never starts the data's gait still runs well from mid-episode states).

Prints Spearman's ρ between each estimate and the real scores over the 2n policies, the regret
of picking the arg max (best real score − real score of the pick), and the regret of the arg max over
the improved ones only (what a run selects from). ``--json`` keeps every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor

from uepo.cli import run_config
from uepo.config import Config
from uepo.data import OfflineData, load_offline_data
from uepo.evaluate import rank_correlation
from uepo.phases import BatchSampler, PhaseContext
from uepo.phases.critics import Critics, train_critics
from uepo.phases.dynamics import Dynamics, train_dynamics
from uepo.phases.improve import AMQ_NOISE_SEED, Support, am_q, amq_setting, head_act_fn, improve, raw_act_fn
from uepo.phases.pretrain import pretrain
from uepo.policy import MultiSeedPolicy
from uepo.runs import Run


def vote_dynamics(dyn: Dynamics) -> Dynamics:
    """T̂ whose termination is the elites' majority, each judged from its own mean next state."""
    model, terminal = dyn.model, dyn.terminal

    def step_with_disagreement(obs: Tensor, action: Tensor, gen: torch.Generator):
        nxt, reward, _, disagreement = Dynamics.step_with_disagreement(dyn, obs, action, gen)
        mean_n, _ = model(obs, action)
        means = mean_n[model.elites] * model.out_std + model.out_mean
        votes = torch.stack([terminal(obs, action, obs + m[:, :-1]) for m in means]).float().mean(0)
        return nxt, reward, votes > 0.5, disagreement

    clone = Dynamics(model, terminal, dyn.metrics, dyn.holdout_disagreement)
    clone.step_with_disagreement = step_with_disagreement  # type: ignore[method-assign]
    return clone


def mean_dynamics(dyn: Dynamics) -> Dynamics:
    """T̂ rolled on the elites' mean prediction: no member draw, no noise."""
    model, terminal = dyn.model, dyn.terminal

    def step_with_disagreement(obs: Tensor, action: Tensor, gen: torch.Generator):
        _, _, _, disagreement = Dynamics.step_with_disagreement(dyn, obs, action, gen)
        mean_n, _ = model(obs, action)
        mean = (mean_n[model.elites] * model.out_std + model.out_mean).mean(0)
        nxt = obs + mean[:, :-1]
        return nxt, mean[:, -1], terminal(obs, action, nxt), disagreement

    clone = Dynamics(model, terminal, dyn.metrics, dyn.holdout_disagreement)
    clone.step_with_disagreement = step_with_disagreement  # type: ignore[method-assign]
    return clone


class RealDynamics:
    """The real env in T̂'s place: one MuJoCo env per start state, set to it, stepped in lockstep."""

    def __init__(self, env_spec, starts: Tensor):
        self.envs = [gym.make(env_spec).unwrapped for _ in range(starts.shape[0])]
        for env, obs in zip(self.envs, starts[:, -1].double().numpy(), strict=True):
            env.reset(seed=0)
            nq = env.model.nq
            env.set_state(np.concatenate([[0.0], obs[:nq - 1]]), obs[nq - 1:])

    def step_with_disagreement(self, obs: Tensor, action: Tensor, gen: torch.Generator):
        nxt, reward, done = [], [], []
        for env, a in zip(self.envs, action.double().numpy(), strict=True):
            o, r, terminated, _, _ = env.step(np.clip(a, -1, 1))
            nxt.append(o), reward.append(r), done.append(terminated)
        nxt_t = torch.as_tensor(np.stack(nxt), dtype=obs.dtype)
        return nxt_t, torch.as_tensor(reward, dtype=obs.dtype), torch.as_tensor(done), torch.zeros(obs.shape[0])


@torch.no_grad()
def model_return(act: Callable, dyn: Dynamics, critics, starts: Tensor, horizon: int, gamma: float,
                 normalize: Callable, support: Support) -> float:
    """Σ_t γ^t r̂_t + γ^H V(s_H) from each start state in T̂, averaged; see the module's text."""
    gen = torch.Generator().manual_seed(AMQ_NOISE_SEED)
    hist, rows = starts.clone(), starts.shape[0]
    alive = torch.ones(rows, dtype=torch.bool)
    ret = torch.zeros(rows, dtype=torch.float64)
    for t in range(horizon):
        obs, a = hist[:, -1], act(hist)
        nxt, reward, done, disagreement = dyn.step_with_disagreement(obs, a, gen)
        leaving = alive & (disagreement > support.disagreement)
        ret += torch.where(leaving, gamma**t * support.q_floor, 0.0)
        alive = alive & ~leaving
        ret += torch.where(alive, gamma**t * reward.double(), 0.0)
        alive = alive & ~done
        nxt = torch.maximum(torch.minimum(nxt, support.obs_high), support.obs_low)
        hist = torch.cat([hist[:, 1:], torch.where(alive[:, None], nxt, obs)[:, None]], dim=1)
    v_end = critics.v(normalize(hist[:, -1])).double().clamp(support.q_low, support.q_high)
    ret += torch.where(alive, gamma**horizon * v_end, 0.0)
    return float(ret.mean())


@torch.no_grad()
def one_step_q(act: Callable, critics, starts: Tensor, normalize: Callable, support: Support) -> float:
    return float(critics.q_value(normalize(starts[:, -1]), act(starts)).clamp(support.q_low, support.q_high).mean())


@dataclass
class FinishedRun:
    cfg: Config
    data: OfflineData
    critics: Critics
    dynamics: Dynamics
    policy: MultiSeedPolicy  # phase B's (raw sub-policies)
    scores: dict  # summary.json's
    acts: list[Callable]  # the raw sub-policies, then the improved ones
    real: list[float]  # their real-env scores, in that order
    improved: MultiSeedPolicy | None = None  # phase D's (the accepted heads)


def append_jsonl(path: Path | None, row: dict) -> None:
    """One probe's result as a line of ``path`` (none: not kept), appended as it comes so that a long probe
    keeps what it finished."""
    if path is not None:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


def real_data_view(root: Path, dest: Path) -> Path:
    """A view of a finished run without its phase-C result, so that phase C stops at T̂0 (its checkpoint, fitted
    on real data alone): every other checkpoint is a link to the run's, and ``dest`` takes what the view writes."""
    (dest / "checkpoints").mkdir(parents=True, exist_ok=True)
    for src in [*(root / "checkpoints").iterdir(), root / "config.yaml", root / "summary.json"]:
        link = dest / src.relative_to(root)
        if src.name != "dynamics.pt" and not link.exists():
            link.symlink_to(src.resolve())
    return dest


def load_finished_run(root: Path, t0_view: Path | None = None) -> FinishedRun:
    """A finished run's phases A–D, loaded from its checkpoints, and its 2n policies with their real scores.
    With ``t0_view`` (a folder of its own) the dynamics are T̂0, fitted on real data alone (``real_data_view``),
    instead of T̂; everything else is the run's."""
    # the phases below load what the run finished and would train what it did not, into the run's own directory
    summary = json.loads((root / "summary.json").read_text()) if (root / "summary.json").exists() else {}
    needed = ["critics", "pretrain", "dynamics_T0" if t0_view else "dynamics", "improve"]
    missing = [n for n in needed if not (root / "checkpoints" / f"{n}.pt").exists()]
    if "improved" not in summary.get("scores", {}) or missing:
        raise SystemExit(f"{root} is not a finished run (summary.json without scores, or no checkpoint of "
                         f"{missing}): finish it with `python -m uepo.train --run_dir {root} --resume` first; "
                         "nothing was loaded or written")
    cfg = run_config(root)
    data = load_offline_data(cfg.dataset)
    if t0_view is not None:
        root, cfg.dynamics.augmentation = real_data_view(root, t0_view), False
    run = Run(root, resume=True, tensorboard=False)
    ctx = PhaseContext(run, cfg, data, torch.device("cpu"), progress=False)
    critics, pre = train_critics(ctx), pretrain(ctx)  # all load from the run's checkpoints
    dyn = train_dynamics(ctx, pre.policy)
    imp = improve(ctx, pre.policy, critics, dyn)
    run.close()
    scores = summary["scores"]
    n = pre.policy.num_seeds
    acts = [raw_act_fn(pre.policy, i) for i in range(n)] + \
           [head_act_fn(imp.policy, imp.policy.heads[i], i) for i in range(n)]
    return FinishedRun(cfg, data, critics, dyn, pre.policy, scores, acts, scores["raw"] + scores["improved"],
                       imp.policy)


INDEPENDENT_SEED_OFFSET = 500000  # the second critics' run seed: 1000·s + this (apart from seeds.py's streams)


def independent_critics(fin: FinishedRun, root: Path, cache: Path) -> Critics:
    """Phase A again, as the run's config says, from seed 1000·s + 500000; kept under ``cache``."""
    cfg = copy.deepcopy(fin.cfg)
    cfg.seed = 1000 * fin.cfg.seed + INDEPENDENT_SEED_OFFSET
    run = Run(cache / "_".join(root.parts[-3:]), resume=True, tensorboard=False)
    critics = train_critics(PhaseContext(run, cfg, fin.data, torch.device("cpu"), progress=False))
    run.close()
    return critics


def probe(root: Path, state_counts: list[int], rules: list[str], draws: list[int],
          indep_cache: Path = Path("runs/indep_critics"), start_steps: int = 0) -> dict:
    fin = load_finished_run(root)
    cfg, data, critics, dyn, scores, real, acts = (fin.cfg, fin.data, fin.critics, fin.dynamics, fin.scores, fin.real,
                                                   fin.acts)
    support, horizon = amq_setting(data, dyn, critics, cfg)  # the run's own (200 steps for locomotion)
    norm, gamma = data.normalize, cfg.critics.gamma
    indep = independent_critics(fin, root, indep_cache) if "amq-indep" in rules else None

    def estimate(rule: str, act: Callable, starts: Tensor) -> float:
        if rule == "amq-indep":
            return am_q(act, dyn, indep, starts, horizon, norm, support).value
        if rule in ("amq-h500", "amq-h1000"):
            return am_q(act, dyn, critics, starts, int(rule[5:]), norm, support).value
        if rule in ("amq", "amq-vote", "amq-mean"):
            model = {"amq": dyn, "amq-vote": vote_dynamics(dyn), "amq-mean": mean_dynamics(dyn)}[rule]
            return am_q(act, model, critics, starts, horizon, norm, support).value
        if rule in ("real", "real-h1000"):
            length = horizon if rule == "real" else 1000
            return am_q(act, RealDynamics(data.env_spec, starts), critics, starts, length, norm, support).value
        if rule == "real-return":
            return model_return(act, RealDynamics(data.env_spec, starts), critics, starts, horizon, gamma, norm,
                                support)
        if rule == "mbr":
            return model_return(act, dyn, critics, starts, horizon, gamma, norm, support)
        return one_step_q(act, critics, starts, norm, support)

    best_real = max(real)
    out = {"run": str(root), "real": real, "rules": {}}
    print(f"\n{root}: real raw {[round(x, 1) for x in scores['raw']]} improved "
          f"{[round(x, 1) for x in scores['improved']]}", flush=True)
    # start_steps 0: uniform over the data (BatchSampler at fraction 0 draws exactly as sample_indices)
    sampler = BatchSampler(data, 1.0 if start_steps else 0.0, max(start_steps, 1))
    for states, draw, name in ((s, d, r) for s in state_counts for d in draws for r in rules):
        idx = sampler(states, torch.Generator().manual_seed(cfg.seed * 1000 + 4242 + draw))
        starts = data.histories(idx, fin.policy.history)
        values = [estimate(name, a, starts) for a in acts]
        name = f"{name}@{states}#{draw}" + (f"/first{start_steps}" if start_steps else "")
        rho = rank_correlation(values, real)
        pick = max(range(len(values)), key=values.__getitem__)
        n = len(values) // 2
        pick_improved = max(range(n, 2 * n), key=values.__getitem__)
        regret, regret_improved = best_real - real[pick], best_real - real[pick_improved]
        out["rules"][name] = {"values": values, "rho": rho, "pick": pick, "regret": regret,
                              "pick_improved": pick_improved - n, "regret_improved": regret_improved}
        rho_text = "—" if rho is None else f"{rho:+.2f}"
        print(f"  {name:<14} ρ {rho_text:>5}  pick {pick} regret {regret:5.1f}  of the improved: pick "
              f"{pick_improved - n} regret {regret_improved:5.1f}  values {[round(v, 1) for v in values]}",
              flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--ope_states", type=int, nargs="+", default=[64])
    parser.add_argument("--rules", nargs="+", default=["amq", "amq-h500", "amq-vote", "amq-mean", "mbr", "q1"])
    parser.add_argument("--draws", type=int, nargs="+", default=[0], help="which draws of the start states")
    parser.add_argument("--indep_cache", type=Path, default=Path("runs/indep_critics"),
                        help="amq-indep: where the second critics are trained and kept")
    parser.add_argument("--start_steps", type=int, default=0,
                        help="start every estimate from episodes' first N steps (1: reset states; 0: uniform)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for root in args.runs:
        results.append(probe(root, args.ope_states, args.rules, args.draws, args.indep_cache, args.start_steps))
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    print("\nmean over runs:")
    for name in results[0]["rules"]:
        rhos = [r["rules"][name]["rho"] for r in results if r["rules"][name]["rho"] is not None]
        regrets = [r["rules"][name]["regret"] for r in results]
        improved = [r["rules"][name]["regret_improved"] for r in results]
        mean_rho = sum(rhos) / len(rhos) if rhos else math.nan
        print(f"  {name:<14} ρ {mean_rho:+.2f}  regret {sum(regrets) / len(regrets):5.1f}  "
              f"best picked {sum(r == 0 for r in regrets)} of {len(regrets)}  of the improved: regret "
              f"{sum(improved) / len(improved):5.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
