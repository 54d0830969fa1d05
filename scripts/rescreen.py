"""A finished run's phases A–B with ``--pretrain.seed_candidates M`` applied, ready to resume from phase C.

    python scripts/rescreen.py SOURCE_RUN NEW_RUN [--candidates 16]
    python -m uepo.train --resume NEW_RUN

Screening runs after phase B's training and draws its states from a stream of its own
(``seeds.screen_seed``), so a run started with ``--pretrain.seed_candidates M`` ends phase B with exactly
the policy written here: the source's trained backbone, the kept seeds and τ recalibrated on the screening
states (the same ``finish_sub_policies`` call). NEW_RUN gets the source's config with that field set,
its critics and this phase-B checkpoint; phases C–D and the evaluation run on resume.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from uepo.cli import run_config
from uepo.config import save_yaml
from uepo.data import load_offline_data
from uepo.phases.pretrain import finish_sub_policies
from uepo.policy import MultiSeedPolicy
from uepo.runs import atomic_torch_save
from uepo.seeds import screen_seed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--candidates", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = run_config(args.source)
    if cfg.policy != "diffusion":
        raise SystemExit(f"{args.source} is a {cfg.policy} run: seed screening is for diffusion sub-policies")
    cfg.pretrain.seed_candidates, cfg.run_dir, cfg.reuse_from, cfg.resume = args.candidates, str(args.target), "", False
    if args.target.exists():
        raise SystemExit(f"{args.target} exists: pass a new run directory")
    (args.target / "checkpoints").mkdir(parents=True)
    save_yaml(cfg, args.target / "config.yaml")
    for name in ("critics", "dynamics_T0"):  # neither reads the sub-policies (T̂0: the real data alone)
        shutil.copy2(args.source / "checkpoints" / f"{name}.pt", args.target / "checkpoints" / f"{name}.pt")
    done = torch.load(args.source / "checkpoints" / "pretrain.pt", map_location="cpu", weights_only=False)
    policy = MultiSeedPolicy.from_state(done["policy"])
    data = load_offline_data(cfg.dataset, False, cfg.data.action_clip)
    metrics = finish_sub_policies(policy, data, cfg, torch.Generator().manual_seed(screen_seed(cfg.seed)))
    atomic_torch_save({"policy": policy.state(), "metrics": metrics, "net": done["net"]},
                      args.target / "checkpoints" / "pretrain.pt")
    screen = metrics["seed_screen"]
    print(f"{args.target}: kept seeds {screen['kept']} of {screen['candidates']}, τ {metrics['tau']:.4g}, "
          f"divergence {metrics['sub_policy_divergence']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
