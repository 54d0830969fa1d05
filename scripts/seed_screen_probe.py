"""Does an offline statistic of a seed predict its raw sub-policy's real score? (issue 8, item 1)

    python scripts/seed_screen_probe.py runs/m400/local/walker2d/medium-v0/main-s2 ... \
        --candidates 16 --episodes 5 --json out.jsonl

For each finished run: phase B's backbone is sampled under ``--candidates`` initial noises ε_j
(the run's seed temperature; candidate j is drawn like sub-policy j, so the first n are the run's
own ε_i), each on its own, with the adaptive perturbation off (η = 0, so a candidate does not
depend on the others). Per candidate: the first-action and whole-chunk mean squared error against
the dataset's actions on ``--states`` dataset states (the run's seed), and the real score of its
raw μ^j_1 over ``--episodes`` deterministic episodes (uepo.train's evaluation seeds). One JSON line
per run, with Spearman's ρ between each error and the score.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from ope_probe import append_jsonl  # scripts/ is sys.path[0] when this runs

from uepo.cli import run_config
from uepo.data import load_offline_data
from uepo.evaluate import evaluate_policy
from uepo.phases import sample_indices
from uepo.policy import MultiSeedPolicy
from uepo.seeds import evaluation_seed


def candidate_policy(policy: MultiSeedPolicy, first: int, count: int) -> MultiSeedPolicy:
    """Candidates first … first+count-1 of the run's seed stream, unperturbed, on the same backbone."""
    config = dict(policy.config, num_seeds=count, base_seed=int(policy.config["base_seed"]) + first,
                  eta=0.0, tau=0.0)
    return MultiSeedPolicy(config, policy.obs_mean, policy.obs_std, backbone=policy.denoiser)


@torch.no_grad()
def errors(policy: MultiSeedPolicy, data, states: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per seed: first-action MSE and masked chunk MSE against the dataset's actions."""
    chunks = policy.base_chunks_from_cond(data.cond(states, policy.history))  # (B, n, H, d_a)
    target, mask = data.chunks(states, policy.horizon)  # (B, H, d_a), (B, H)
    first = ((chunks[:, :, 0] - target[:, None, 0]) ** 2).mean((0, 2))
    sq = ((chunks - target[:, None]) ** 2).mean(-1) * mask[:, None]  # (B, n, H)
    chunk = sq.sum((0, 2)) / mask.sum()
    return first.tolist(), chunk.tolist()


def spearman(x: list[float], y: list[float]) -> float:
    rx = torch.tensor(x).argsort().argsort().double()
    ry = torch.tensor(y).argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def probe(run_dir: Path, candidates: int, episodes: int, num_states: int) -> dict:
    cfg = run_config(run_dir)
    data = load_offline_data(cfg.dataset, False, cfg.data.action_clip)
    policy = MultiSeedPolicy.load(run_dir / "checkpoints" / "offline.pt")
    states = sample_indices(data.size, num_states, torch.Generator().manual_seed(cfg.seed * 1000 + 77))
    first_mse, chunk_mse = errors(candidate_policy(policy, 0, candidates), data, states)
    scores = []
    for j in range(candidates):
        one = candidate_policy(policy, j, 1)
        result = evaluate_policy(one, data.env_spec, 0, episodes=episodes, raw=True, seed=evaluation_seed(cfg.seed),
                                 ref_min_score=data.ref_min_score, ref_max_score=data.ref_max_score)
        scores.append(result["score_mean"])
        print(f"{run_dir.name} candidate {j}: score {scores[-1]:.1f}  first-action mse {first_mse[j]:.4f}  "
              f"chunk mse {chunk_mse[j]:.4f}", file=sys.stderr)
    return {"run": str(run_dir), "dataset": cfg.dataset, "seed": cfg.seed, "candidates": candidates,
            "episodes": episodes, "states": num_states, "temperature": policy.seed_temperature,
            "scores": scores, "first_action_mse": first_mse, "chunk_mse": chunk_mse,
            "rho_first": spearman(first_mse, scores), "rho_chunk": spearman(chunk_mse, scores)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--candidates", type=int, default=16)
    parser.add_argument("--episodes", type=int, default=5)
    parser.add_argument("--states", type=int, default=2048)
    parser.add_argument("--json", type=Path, help="append one JSON line per run here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run_dir in args.runs:
        row = probe(run_dir, args.candidates, args.episodes, args.states)
        print(json.dumps({k: row[k] for k in ("run", "rho_first", "rho_chunk")}))
        append_jsonl(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
