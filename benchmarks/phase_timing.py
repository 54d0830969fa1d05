"""Per-step time of every phase's trainer at a preset's sizes, and the whole preset's time projected.

    python -m benchmarks.phase_timing --device cuda --preset paper --out phase_timing.json
    python -m benchmarks.phase_timing --device cpu --preset smoke --steps 2     # what the test runs

Each phase's trainer (uepo.phases.runner) runs ``--warmup`` then ``--steps`` steps on the shipped Hopper
subset (only its dimensions matter); its step count at the preset's budget comes from the config. The
projection is Σ (steps of the phase × seconds per step), for a dataset of ``--dataset_size`` transitions
(D4RL's MuJoCo sets: 1e6 at most), so the dynamics fits are projected at ``max_epochs`` (an upper bound:
early stopping usually ends them sooner) and AM-Q rollouts run their whole horizon (no termination). Phase
E is projected from one PPO rollout + update at the preset's rollout size. Networks are untrained: a step
costs the same either way.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from uepo import ops
from uepo.config import preset
from uepo.data import load_offline_data
from uepo.datasets import DEFAULT_DATASET_ID, use_shipped_dataset
from uepo.phases import PhaseContext, sample_indices
from uepo.phases.critics import Critics, IQLTrainer
from uepo.phases.dynamics import Dynamics, EnsembleTrainer, Transitions
from uepo.phases.improve import BPPOTrainer, Support, am_q, head_act_fn
from uepo.phases.pretrain import PretrainTrainer, make_policy_config
from uepo.phases.runner import accelerate
from uepo.policy import MultiSeedPolicy
from uepo.runs import Run, seed_everything


def seconds_per_call(fn: Callable[[], object], device: torch.device, steps: int, warmup: int) -> float:
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def trainer_step(ctx: PhaseContext, trainer) -> Callable[[], object]:
    """One step as the runner runs it (with --compile and --amp applied to phases A–C)."""
    counter, autocast = iter(range(10**9)), accelerate(ctx, trainer)

    def step() -> object:
        with autocast():
            return trainer.step(next(counter))
    return step


def measure(device: torch.device, preset_name: str, steps: int, warmup: int, dataset_size: int,
            online: bool, amp: str = "off", compile: bool = False, cuda_graph: bool = False) -> dict:  # noqa: A002
    cfg = preset(preset_name)
    cfg.device, cfg.amp, cfg.compile, cfg.online.cuda_graph = str(device), amp, compile, cuda_graph
    use_shipped_dataset(DEFAULT_DATASET_ID)
    data = load_offline_data(DEFAULT_DATASET_ID).to(device)
    seed_everything(0)
    out: dict = {"device": str(device), "preset": preset_name, "dataset_size": dataset_size, "amp": amp,
                 "compile": compile, "cuda_graph": cuda_graph,
                 "kernel_backend": ops.backend(device.type), "steps_timed": steps, "per_step_s": {},
                 "steps": {}, "projected_s": {}}
    with tempfile.TemporaryDirectory() as tmp:
        ctx = PhaseContext(Run(Path(tmp), tensorboard=False), cfg, data, device, progress=False)
        per, count = out["per_step_s"], out["steps"]

        critics = IQLTrainer(ctx)
        per["A_critics"] = seconds_per_call(trainer_step(ctx, critics), device, steps, warmup)
        count["A_critics"] = cfg.critics.steps

        pretrainer = PretrainTrainer(ctx, make_policy_config(cfg, data.obs_dim, data.action_dim))
        per["B_pretrain"] = seconds_per_call(trainer_step(ctx, pretrainer), device, steps, warmup)
        count["B_pretrain"] = cfg.pretrain.steps
        policy = MultiSeedPolicy(make_policy_config(cfg, data.obs_dim, data.action_dim, tau=0.1), data.obs_mean,
                                 data.obs_std, backbone=pretrainer.ema).to(device)

        gen = ctx.generator("dynamics")
        idx = torch.arange(data.size)
        real = Transitions(data.obs[idx], data.actions[idx], data.rewards[idx], data.next_obs[idx],
                           data.terminals[idx], torch.ones(data.size, device=device))
        fit = EnsembleTrainer(ctx, "T0", real, real, gen)
        per_update = seconds_per_call(trainer_step(ctx, fit), device, max(1, steps // 4), 1) / fit.updates
        updates_per_epoch = math.ceil(dataset_size / cfg.dynamics.batch_size)
        if cfg.dynamics.max_updates_per_epoch > 0:
            updates_per_epoch = min(updates_per_epoch, cfg.dynamics.max_updates_per_epoch)
        per["C_dynamics_update"] = per_update
        count["C_dynamics_update"] = 2 * cfg.dynamics.max_epochs * updates_per_epoch  # T̂0 and T̂, at most

        never = Dynamics(fit.result(), lambda o, a, n: torch.zeros(o.shape[0], dtype=torch.bool, device=o.device),
                         {}, None)
        crit = Critics(critics.q_target, critics.v)
        horizon = cfg.improve.ope_horizon or 200
        starts = data.histories(sample_indices(data.size, cfg.improve.ope_states, gen), policy.history)
        support = Support.unbounded(data.obs_dim, device)

        def evaluate(i, head):
            return am_q(head_act_fn(policy, head, i), never, crit, starts, horizon, data.normalize, support)

        per["D_amq_evaluation"] = seconds_per_call(lambda: evaluate(0, policy.heads[0]), device, 1, 1)
        evals_per_seed = math.ceil(cfg.improve.steps / cfg.improve.ope_every) + 1  # + the raw μ^i's
        count["D_amq_evaluation"] = policy.num_seeds * evals_per_seed
        best = {"heads": [h.state_dict() for h in policy.heads], "amq": [0.0] * policy.num_seeds,
                "plausible": [True] * policy.num_seeds}
        base = torch.zeros(data.size, data.action_dim, device=device)
        bppo = BPPOTrainer(ctx, policy, 0, best, crit, data.normalize(data.obs), base, evaluate, gen)
        per["D_bppo"] = seconds_per_call(trainer_step(ctx, bppo), device, steps, warmup)
        count["D_bppo"] = policy.num_seeds * cfg.improve.steps

        if online:
            per["E_online_rollout"], count["E_online_rollout"] = online_rollout_seconds(
                policy, crit, cfg.online, data.env_id, device), cfg.online.env_steps // cfg.online.rollout_steps
    projected = out["projected_s"]
    for key, seconds in out["per_step_s"].items():
        projected[key] = seconds * out["steps"][key]
    projected["total"] = sum(projected.values())
    return out


def online_rollout_seconds(policy: MultiSeedPolicy, critics: Critics, cfg, env_id: str,
                           device: torch.device) -> float:
    """One PPO rollout of ``cfg.rollout_steps`` env steps and its update, as phase E runs them."""
    import numpy as np

    from uepo import envs
    from uepo.phases.online import OnlineAgent, _collect, _update

    agent = OnlineAgent(policy, 0, critics.v, cfg)
    vec = envs.make_vector_env(env_id, cfg.num_envs, policy.history)
    obs, _ = vec.reset(seed=list(range(cfg.num_envs)))
    returns, lengths = np.zeros(cfg.num_envs), np.zeros(cfg.num_envs, dtype=np.int64)

    def rollout_and_update() -> None:
        nonlocal obs
        buf, obs = _collect(agent, vec, obs, cfg.rollout_steps // cfg.num_envs, cfg, returns, lengths, [])
        _update(agent, buf, cfg, 0)

    try:
        return seconds_per_call(rollout_and_update, device, 1, 0)
    finally:
        vec.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per trainer (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--dataset_size", type=int, default=1_000_000)
    parser.add_argument("--no-online", dest="online", action="store_false", help="skip the phase-E rollout")
    parser.add_argument("--amp", default="off", choices=["off", "bf16"], help="as uepo.train --amp")
    parser.add_argument("--compile", action="store_true", help="as uepo.train --compile true")
    parser.add_argument("--cuda_graph", action="store_true", help="as uepo.train --online.cuda_graph true")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1) if args.device == "cpu" else None
    result = measure(torch.device(args.device), args.preset, args.steps, args.warmup, args.dataset_size,
                     args.online, args.amp, args.compile, args.cuda_graph)
    print(f"{'phase part':22s} {'s/step':>10s} {'steps':>10s} {'projected':>12s}")
    for key, seconds in result["per_step_s"].items():
        print(f"{key:22s} {seconds:10.3g} {result['steps'][key]:10d} {result['projected_s'][key] / 60:10.1f} min")
    print(f"{'projected total':22s} {'':>10s} {'':>10s} {result['projected_s']['total'] / 3600:10.2f} h "
          f"({args.preset} preset, {args.dataset_size} transitions, {args.device})")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
