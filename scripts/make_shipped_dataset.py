"""Re-make the small Hopper dataset that ships with uepo (the default of `python -m uepo.train`).

Whole episodes are drawn uniformly at random without replacement (seeded), so the kept data
has the source's spread of returns; they are written in Minari's on-disk layout under
``uepo/datasets/`` together with ``provenance.json``.

    MINARI_DATASETS_PATH=../shared/datasets python scripts/make_shipped_dataset.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHIPPED_ROOT = REPO / "uepo" / "datasets"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="local/hopper/medium-v0", help="Minari id to subsample")
    parser.add_argument("--target", default="local/hopper/medium-small-v0", help="Minari id to write")
    parser.add_argument("--episodes", type=int, default=60, help="whole episodes to keep")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episode draw")
    args = parser.parse_args()

    import minari  # after argparse so that --help works without it
    from minari.data_collector import EpisodeBuffer

    if "MINARI_DATASETS_PATH" not in os.environ:
        raise SystemExit("set MINARI_DATASETS_PATH to the folder holding the source dataset "
                         "(e.g. ../shared/datasets)")
    source = minari.load_dataset(args.source)
    if args.episodes > source.total_episodes:
        raise SystemExit(f"{args.source} has only {source.total_episodes} episodes")
    rng = np.random.default_rng(args.seed)
    kept = sorted(rng.choice(source.total_episodes, size=args.episodes, replace=False).tolist())

    buffers, returns, steps = [], [], 0
    for ep in source.iterate_episodes(episode_indices=kept):
        buffers.append(EpisodeBuffer(
            id=None, observations=ep.observations, actions=ep.actions, rewards=ep.rewards,
            terminations=ep.terminations, truncations=ep.truncations, infos={},
        ))
        returns.append(float(np.sum(ep.rewards)))
        steps += len(ep.actions)

    target_dir = SHIPPED_ROOT / args.target
    if target_dir.exists():
        shutil.rmtree(target_dir)
    meta = source.storage.metadata
    os.environ["MINARI_DATASETS_PATH"] = str(SHIPPED_ROOT)  # create_dataset_from_buffers writes here
    minari.create_dataset_from_buffers(
        dataset_id=args.target,
        buffer=buffers,
        env=source.spec.env_spec,
        eval_env=source.spec.env_spec,
        algorithm_name=meta.get("algorithm_name"),
        author=set(meta.get("author") or ["uepo"]),
        author_email=set(meta.get("author_email") or ["none@example.com"]),
        code_permalink="scripts/make_shipped_dataset.py",
        ref_min_score=meta.get("ref_min_score"),
        ref_max_score=meta.get("ref_max_score"),
        description=f"{args.episodes} whole episodes of {args.source} drawn uniformly at random "
                    f"(seed {args.seed}); see provenance.json.",
        data_format="hdf5",
    )
    data_file = target_dir / "data" / "main_data.hdf5"
    provenance = {
        "source_id": args.source,
        "source_episodes": source.total_episodes,
        "source_steps": source.total_steps,
        "episodes_kept": kept,
        "how_chosen": "whole episodes, uniformly at random without replacement (numpy default_rng)",
        "seed": args.seed,
        "steps": steps,
        "mean_return": float(np.mean(returns)),
        "std_return": float(np.std(returns)),
        "source_mean_return": float(np.mean([np.sum(e.rewards) for e in source.iterate_episodes()])),
        "sha256_main_data": hashlib.sha256(data_file.read_bytes()).hexdigest(),
        "script": "scripts/make_shipped_dataset.py",
    }
    (target_dir / "provenance.json").write_text(json.dumps(provenance, indent=1) + "\n")
    size_mb = data_file.stat().st_size / 1e6
    print(f"wrote {args.target}: {args.episodes} episodes, {steps} steps, {size_mb:.1f} MB, "
          f"mean return {provenance['mean_return']:.1f} (source {provenance['source_mean_return']:.1f})")


if __name__ == "__main__":
    main()
