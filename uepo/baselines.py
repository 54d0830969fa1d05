"""Peers of the online phase, scored with phase E's envs, evaluation seeds and normaliser (issue 10).

    python -m uepo.baselines ppo-scratch --dataset local/hopper/medium-v0 --seed 0 --run_dir runs/peers/ppo-s0
    python -m uepo.baselines iql-online --from_run runs/hopper-m-s0 --seed 0 --run_dir runs/peers/iql-s0

``iql-online`` is IQL's offline-to-online fine-tuning from a run's own phase-A critics
(``uepo.iql_online``).

``ppo-scratch`` is PPO from a fresh Gaussian policy: what phase E would do without the offline phases.
It runs ``uepo.phases.online.run_online`` on a bundle shaped like ``checkpoints/offline.pt`` whose
policy is one randomly initialised Gaussian member under a residual head (the backbone trains too,
``freeze_backbone=False``) and whose V is fresh, with the usual from-scratch PPO settings (CleanRL's
and stable-baselines3's defaults: lr 3e-4, clip 0.2, no entropy bonus, 10 epochs of 64-sample
minibatches). Only the dataset's state statistics and reference returns are read from the data,
so the curve is scored exactly as phase E's is, and the state normaliser is the same.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from pathlib import Path

import torch

from uepo.config import OnlineConfig
from uepo.data import load_offline_data
from uepo.iql_online import IQLOnlineConfig, iql_online
from uepo.nets import LOG_STD_MAX, LOG_STD_MIN, ValueNet
from uepo.phases.online import run_online
from uepo.policy import MultiSeedPolicy, policy_config
from uepo.runs import Run, provenance, seed_everything
from uepo.seeds import phase_seed

PEER_SEED_PHASE = "peer"  # seeds.phase_seed name of the fresh networks' initialisation


def scratch_config(env_steps: int, **overrides) -> OnlineConfig:
    """From-scratch PPO settings (CleanRL's / stable-baselines3's MuJoCo defaults) on phase E's machinery."""
    base = dict(env_steps=env_steps, num_envs=8, rollout_steps=2048, epochs=10, minibatch_size=64, clip=0.2,
                value_clip=0.2, entropy=0.0, lr_actor=3e-4, lr_critic=3e-4, freeze_backbone=False,
                refit_value=False, eval_every=50_000, eval_episodes=10, checkpoint_every=50_000)
    return OnlineConfig(**{**base, **overrides})


def scratch_bundle(obs_dim: int, action_dim: int, obs_mean: torch.Tensor, obs_std: torch.Tensor, env_id: str,
                   dataset_info: dict, seed: int, history: int = 2, hidden: int = 256, init_std: float = 0.6) -> dict:
    """A bundle shaped like checkpoints/offline.pt around a fresh policy: one Gaussian member (random
    weights) under a residual head whose std starts at ``init_std``, and a fresh V (hidden × 2)."""
    seed_everything(phase_seed(seed, PEER_SEED_PHASE))
    cfg = policy_config("gaussian-ensemble", obs_dim, action_dim, history=history, horizon=1, num_seeds=1,
                        width=hidden, num_blocks=2, head_hidden=hidden, head_layers=2)
    policy = MultiSeedPolicy(cfg, obs_mean, obs_std)
    # the head maps u ∈ (−1, 1) to log σ = LOG_STD_MIN + (LOG_STD_MAX − LOG_STD_MIN)(u + 1)/2: start at init_std
    u = 2 * (math.log(init_std) - LOG_STD_MIN) / (LOG_STD_MAX - LOG_STD_MIN) - 1
    with torch.no_grad():
        head = policy.heads[0]
        head.log_std_layer.weight.mul_(0.01)
        head.log_std_layer.bias.fill_(math.atanh(u))
    value = ValueNet(obs_dim, hidden, 2)
    return {"policy": policy.state(), "selected": 0,
            "value": {"state_dict": value.state_dict(), "config": {"obs_dim": obs_dim, "hidden": hidden, "layers": 2}},
            "dataset": dataset_info, "env_id": env_id}


def ppo_scratch(dataset: str, seed: int, run_dir: Path, cfg: OnlineConfig, device: str = "cpu",
                progress: bool = True) -> dict:
    """PPO from scratch on the dataset's env; resumable like phase E (``run_dir/checkpoints/online.pt``)."""
    data = load_offline_data(dataset)
    bundle = scratch_bundle(data.obs_dim, data.action_dim, data.obs_mean, data.obs_std, data.env_id,
                            data.provenance, seed)
    run = Run(Path(run_dir), resume=(Path(run_dir) / "checkpoints").exists())
    run.update_summary(peer="ppo-scratch", dataset=data.provenance, seed=seed, config=dataclasses.asdict(cfg),
                       provenance=provenance(device))
    try:
        return run_online(run, cfg, bundle, seed=seed, env=data.env_spec or data.env_id, progress=progress,
                          device=device)
    finally:
        run.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uepo.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("peer", choices=["ppo-scratch", "iql-online"])
    parser.add_argument("--dataset", help="ppo-scratch: its env, state statistics and reference returns are used")
    parser.add_argument("--from_run", type=Path, help="iql-online: a run whose phase A finished (its critics, "
                                                      "dataset and config are used)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run_dir", type=Path, required=True, help="resumed when it holds a checkpoint")
    parser.add_argument("--env_steps", type=int, default=1_000_000)
    parser.add_argument("--num_envs", type=int, default=8, help="ppo-scratch: vector envs")
    parser.add_argument("--update_every", type=int, default=1, help="iql-online: env steps per IQL update")
    parser.add_argument("--actor_steps", type=int, default=IQLOnlineConfig.actor_steps,
                        help="iql-online: offline AWR steps before the first env step")
    parser.add_argument("--eval_every", type=int, default=50_000)
    parser.add_argument("--eval_episodes", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="ppo-scratch: where the networks live")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    needed = "--dataset" if args.peer == "ppo-scratch" else "--from_run"
    if getattr(args, needed.lstrip("-")) is None:
        parser.error(f"{args.peer} needs {needed}")
    if args.peer == "ppo-scratch":
        cfg = scratch_config(args.env_steps, num_envs=args.num_envs, eval_every=args.eval_every,
                             eval_episodes=args.eval_episodes, checkpoint_every=args.eval_every)
        summary = ppo_scratch(args.dataset, args.seed, args.run_dir, cfg, args.device)
    else:
        iql_cfg = IQLOnlineConfig(env_steps=args.env_steps, update_every=args.update_every,
                                  actor_steps=args.actor_steps, eval_every=args.eval_every,
                                  eval_episodes=args.eval_episodes, checkpoint_every=args.eval_every)
        summary = iql_online(args.from_run, args.seed, args.run_dir, iql_cfg)
    print(f"{args.peer} seed {args.seed}: score {summary['score_start']:.1f} -> "
          f"{summary['score_final']:.1f} (best {summary['score_best']:.1f}) after {summary['env_steps']} env steps; "
          f"curve in {args.run_dir / 'metrics.csv'} (online, eval_score)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
