"""How well do the raw sub-policies imitate? Phase B alone, then each raw μ^i in the real env.

    python scripts/imitation_probe.py --run_dir runs/probe/hopper-m-s0 --temperatures 1 0.5 0.3 \
        -- --dataset local/hopper/medium-v0 --preset bench --seed 0 [--pretrain.first_action_weight 4 ...]

Everything after ``--`` is ``python -m uepo.train``'s own flags (preset, dataset, overrides). Phase B
runs (or is loaded from ``run_dir``, which resumes like a training run); then, for each seed
temperature, the sub-policies are re-drawn from the same backbone, τ is recalibrated (on ``--tau_draws`` draws of
dataset states: how much a sub-policy's score hangs on τ), and every raw
μ^i plays ``--episodes`` deterministic episodes (the seeds of ``uepo.train``'s evaluation). One JSON
line per temperature goes to ``run_dir/probe.jsonl``: scores, the mean nearest-competitor divergence
of the sub-policies, and the first-action error against the dataset's actions. ``--mean_draws M`` adds one
row for the model's conditional mean (the mean first action of M prior draws per state, as a Gaussian BC
member acts with its mean): the like-for-like test of the denoiser's fit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TextIO

import torch

from uepo import ops
from uepo.cli import parse_args
from uepo.data import load_offline_data
from uepo.evaluate import evaluate_policy
from uepo.phases import PhaseContext, sample_indices
from uepo.phases.pretrain import calibrate_tau, pretrain
from uepo.policy import MultiSeedPolicy
from uepo.runs import Run, seed_everything
from uepo.seeds import evaluation_seed


def redraw(policy: MultiSeedPolicy, temperature: float) -> MultiSeedPolicy:
    """The same backbone under another seed temperature (a new seed bank)."""
    config = dict(policy.config, seed_temperature=temperature)
    fresh = MultiSeedPolicy(config, policy.obs_mean, policy.obs_std, backbone=policy.denoiser)
    return fresh


class ConditionalMean:
    """The diffusion model's conditional mean E[a_t | S_t], estimated per state as the mean first action of M
    DDIM chains from full prior draws ε ~ N(0, I) without the divergence perturbation: what a Gaussian BC
    member acts with, so the like-for-like comparison of the denoiser's fit (one policy, ``num_seeds`` 1)."""

    num_seeds = 1

    def __init__(self, policy: MultiSeedPolicy, draws: int):
        config = dict(policy.config, seed_temperature=1.0, num_seeds=draws, eta=0.0, seed_offsets=None)
        self.chains = MultiSeedPolicy(config, policy.obs_mean, policy.obs_std, backbone=policy.denoiser)
        self.obs_mean, self.history = policy.obs_mean, policy.history

    def base_action(self, obs_history: torch.Tensor, seed_index: int = 0) -> torch.Tensor:
        return self.chains.base_chunks(obs_history)[:, :, 0].mean(1)


@torch.no_grad()
def imitation_stats(policy: MultiSeedPolicy, data, states: torch.Tensor) -> dict:
    cond = data.cond(states, policy.history)
    chunks = policy.base_chunks_from_cond(cond)  # (B, n, H, d_a)
    first_err = ((chunks[:, :, 0] - data.actions[states][:, None]) ** 2).mean((0, 2))  # (n,)
    out = {"first_action_mse": first_err.tolist()}
    if chunks.shape[2] >= 3 and policy.num_seeds > 1:
        d = ops.nearest_competitor(ops.divergence(chunks.double()))
        out["nearest_divergence"] = float(d.mean())
    first = chunks[:, :, 0]
    out["first_action_spread"] = float(first.std(1).mean()) if policy.num_seeds > 1 else 0.0
    return out


def emit(out: TextIO, row: dict) -> None:
    """Append one result row to probe.jsonl (flushed: a long probe keeps what it finished) and echo it."""
    out.write(json.dumps(row) + "\n")
    out.flush()
    print(json.dumps(row), file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--temperatures", type=float, nargs="*", default=[1.0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--tau_draws", type=int, default=1,
                        help="recalibrate τ on this many draws of 2048 dataset states (draw 0: the default one)")
    parser.add_argument("--mean_draws", type=int, default=0,
                        help="also score the model's conditional mean: the mean first action of this many prior "
                             "draws per state (0: skip)")
    parser.add_argument("--as_trained", action="store_true",
                        help="score phase B's own sub-policies (its seed temperature and τ), as a training run does")
    args, rest = parser.parse_known_args()
    if rest and rest[0] == "--":
        rest = rest[1:]
    cfg = parse_args(rest + ["--run_dir", args.run_dir])
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    data = load_offline_data(cfg.dataset, cfg.download, cfg.data.action_clip)
    run = Run(Path(args.run_dir), resume=True, tensorboard=False)
    ctx = PhaseContext(run, cfg, data, torch.device("cpu"))
    start = time.perf_counter()
    pre = pretrain(ctx)
    train_s = time.perf_counter() - start
    def dataset_states(draw: int) -> torch.Tensor:  # draw 0: the states of the stats (and of τ by default)
        return sample_indices(data.size, 2048, torch.Generator().manual_seed(cfg.seed * 1000 + 77 + draw))

    def score(policy, index: int) -> float:  # sub-policy ``index``'s raw μ, the evaluation's episodes and seeds
        return evaluate_policy(policy, data.env_spec, index, episodes=args.episodes, raw=True,
                               seed=evaluation_seed(cfg.seed), ref_min_score=data.ref_min_score,
                               ref_max_score=data.ref_max_score)["score_mean"]

    states = dataset_states(0)
    temperatures = args.temperatures if cfg.policy == "diffusion" and not args.as_trained else [None]
    with open(Path(args.run_dir) / "probe.jsonl", "a") as out:
        for t, draw in ((temp, k) for temp in temperatures for k in range(args.tau_draws if temp is not None else 1)):
            policy = pre.policy if t is None else redraw(pre.policy, t)
            if t is not None and cfg.pretrain.divergence:
                tau, _ = calibrate_tau(policy, data.cond(dataset_states(draw), policy.history),
                                       cfg.pretrain.tau_quantile)
                policy.set_tau(tau)
            stats = imitation_stats(policy, data, states)
            raw = [score(policy, i) for i in range(policy.num_seeds)]
            row = {"dataset": cfg.dataset, "seed": cfg.seed, "policy": cfg.policy,
                   "temperature": policy.seed_temperature if cfg.policy == "diffusion" else None,
                   "tau": policy.tau, "tau_draw": draw, "raw": raw, "raw_mean": sum(raw) / len(raw),
                   "raw_best": max(raw),
                   "episodes": args.episodes, "eval_seed": evaluation_seed(cfg.seed),
                   "train_s": round(train_s, 1), "overrides": rest, **stats}
            emit(out, row)
        if args.mean_draws > 0 and cfg.policy == "diffusion":
            mean_score = score(ConditionalMean(pre.policy, args.mean_draws), 0)
            emit(out, {"dataset": cfg.dataset, "seed": cfg.seed, "policy": cfg.policy, "conditional_mean_draws":
                       args.mean_draws, "raw": [mean_score], "raw_mean": mean_score, "episodes": args.episodes,
                       "eval_seed": evaluation_seed(cfg.seed), "overrides": rest})
    run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
