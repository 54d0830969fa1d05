"""Where does a raw sub-policy go on HalfCheetah? First-action error by episode step, and its own episodes.

    MINARI_DATASETS_PATH=... python scripts/cheetah_probe.py RUN_DIR [RUN_DIR ...] [--steps 300] [--model]
        [--candidates M [--temperature t ...]]

For a finished run's phase-B model: the squared error of every raw sub-policy's first action against the
dataset's, by the step of the episode it is taken at (HalfCheetah's data decides its gait in an episode's first
~50 steps), then each raw μ^i's own episode (reset seed 0): the root angle (qpos[2]; the data's gait runs
flipped, near π), the forward speed and how much its action moves over time (a policy stuck at the start pose
repeats one action). RESULTS 0n. ``--model`` also rolls each raw μ^i in the run's T̂ (phase C) from the same reset
state, as AM-Q would from a start state: where T̂ has a policy that stands still flip and run, AM-Q cannot tell it
from one that runs (RESULTS 0o). ``--candidates M`` counts how many of M initial noises of the same model (at
the run's seed temperature, or each ``--temperature``) start the gait from the reset state: whether the model
holds the start at all, or a fixed draw decides it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

from uepo.cli import run_config
from uepo.data import load_offline_data
from uepo.phases import PhaseContext
from uepo.phases.dynamics import train_dynamics
from uepo.phases.improve import cache_base_actions
from uepo.phases.pretrain import pretrain
from uepo.runs import Run

STEP_BANDS = ((0, 10), (10, 50), (50, 200), (200, 1000))


@torch.no_grad()
def first_action_error_by_step(policy, data, batch: int = 4096) -> None:
    idx = torch.arange(data.size)
    base = cache_base_actions(policy, data.cond(idx, policy.history), batch)  # (N, n, d_a)
    err = ((base - data.actions[:, None]) ** 2).sum(-1).mean(1)
    step = idx - data.episode_start
    for lo, hi in STEP_BANDS:
        m = (step >= lo) & (step < hi)
        print(f"  steps {lo}-{hi}: first-action squared error {err[m].mean():.3f} "
              f"(the data's actions' squared norm {(data.actions[m] ** 2).sum(-1).mean():.3f})")


@torch.no_grad()
def rollout(policy, env_id: str, i: int, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw μ^i's own episode from reset seed 0: root angle, forward speed and action at every step."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    hist, angle, speed, actions = [obs] * policy.history, [], [], []
    for _ in range(steps):
        h = torch.as_tensor(np.stack(hist[-policy.history:]), dtype=torch.float32)[None]
        a = policy.base_action(h, i)[0].clamp(-1, 1).numpy().astype(np.float64)
        obs, *_ = env.step(a)
        hist.append(obs)
        angle.append(env.unwrapped.data.qpos[2])
        speed.append(env.unwrapped.data.qvel[0])
        actions.append(a)
    env.close()
    return np.array(angle), np.array(speed), np.array(actions)


def angle_marks(angle, steps: int) -> str:
    """The root angle at steps 10, 50, 100 and the last, as own_episode and model_episode print it."""
    return " ".join(f"{angle[min(t, steps) - 1]:+.2f}" for t in (10, 50, 100, steps))


def own_episode(policy, env_id: str, i: int, steps: int) -> str:
    angle, speed, actions = rollout(policy, env_id, i, steps)
    return (f"  raw μ^{i}: root angle at steps 10/50/100/{steps}: {angle_marks(angle, steps)}; "
            f"mean speed {np.mean(speed):+.2f}; "
            f"action std over time {actions.std(0).mean():.3f}")


def gait_starts(policy, env_id: str, candidates: int, temperature: float | None, steps: int = 100) -> str:
    """Of ``candidates`` initial noises of the same model (drawn as seed screening draws them), how many start
    the data's gait: root angle beyond 1.5 rad at step ``steps``. The policy's own noises are restored after."""
    n, own_offsets, own_temperature = policy.num_seeds, policy.config.get("seed_offsets"), policy.seed_temperature
    policy.seed_temperature = own_temperature if temperature is None else temperature
    flipped = drawn = 0
    for start in range(0, candidates, n):
        policy.set_seed_offsets(list(range(start, start + n)))
        flipped += sum(abs(rollout(policy, env_id, i, steps)[0][-1]) > 1.5 for i in range(n))
        drawn += n
    t = policy.seed_temperature
    policy.seed_temperature = own_temperature
    policy.set_seed_offsets(own_offsets if own_offsets is not None else list(range(n)))
    return f"  {flipped} of {drawn} noise draws at temperature {t} start the gait (|root angle| > 1.5 at step {steps})"


@torch.no_grad()
def model_episode(policy, dynamics, env_id: str, i: int, steps: int, rows: int = 16) -> str:
    """Raw μ^i rolled in T̂ from own_episode's reset state: ``rows`` draws of the model's noise, their mean."""
    env = gym.make(env_id)
    obs0, _ = env.reset(seed=0)
    env.close()
    gen = torch.Generator().manual_seed(0)
    hist = torch.as_tensor(obs0, dtype=torch.float32).expand(rows, policy.history, -1).clone()
    angle, speed = [], []
    for _ in range(steps):
        action = policy.base_action(hist, i).clamp(-1, 1)
        nxt, *_ = dynamics.step_with_disagreement(hist[:, -1], action, gen)
        hist = torch.cat([hist[:, 1:], nxt[:, None]], dim=1)
        angle.append(float(nxt[:, 1].mean()))  # obs[1] = qpos[2], the root angle
        speed.append(float(nxt[:, 8].mean()))  # obs[8] = qvel[0], the forward speed
    return (f"  raw μ^{i} in T̂: root angle at steps 10/50/100/{steps}: {angle_marks(angle, steps)}; "
            f"mean speed {np.mean(speed):+.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=300, help="steps of each sub-policy's own episode")
    parser.add_argument("--model", action="store_true", help="also roll each raw μ^i in the run's T̂")
    parser.add_argument("--candidates", type=int, default=0, help="count how many of this many noise draws of "
                        "the model start the data's gait")
    parser.add_argument("--temperature", type=float, nargs="+", default=[], help="--candidates: at these seed "
                        "temperatures (default: the run's)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for root in args.runs:
        cfg = run_config(root)
        data = load_offline_data(cfg.dataset)
        run = Run(root, resume=True, tensorboard=False)
        ctx = PhaseContext(run, cfg, data, torch.device("cpu"), progress=False)
        policy = pretrain(ctx).policy
        dynamics = train_dynamics(ctx, policy) if args.model else None  # loads the run's phase-C checkpoint
        run.close()
        kind = f"{cfg.pretrain.prediction}-prediction" if cfg.policy == "diffusion" else cfg.policy
        print(f"{root} ({kind})")
        first_action_error_by_step(policy, data)
        for i in range(policy.num_seeds):
            print(own_episode(policy, data.env_spec, i, args.steps))
            if dynamics is not None:
                print(model_episode(policy, dynamics, data.env_spec, i, args.steps))
        for temperature in (args.temperature or [None]) if args.candidates else []:
            print(gait_starts(policy, data.env_spec, args.candidates, temperature))
        quantiles = np.quantile(data.obs[:, 1].numpy(), [0.01, 0.5, 0.99]).round(2)
        print(f"  data: root angle (obs[1]) quantiles 1/50/99 %: {quantiles}; "
              f"mean forward speed (obs[8]) {float(data.obs[:, 8].mean()):.2f}")


if __name__ == "__main__":
    main()
