"""Evaluation: deterministic episodes of a sub-policy in the dataset's own environment.

The environment comes from the dataset's Minari metadata (its eval env spec); scores are
normalised per SPEC §1 and labelled with the dataset id, because scores on local or Minari-v0
data are not comparable with D4RL-v2 tables.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from uepo.policy import MultiSeedPolicy


def normalized_score(returns: np.ndarray, ref_min: float | None, ref_max: float | None) -> np.ndarray | None:
    """100·(R − ref_min)/(ref_max − ref_min); None when the dataset has no reference returns."""
    if ref_min is None or ref_max is None:
        return None
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def evaluate_policy(
    policy: MultiSeedPolicy,
    env: Any,
    seed_index: int,
    episodes: int = 10,
    seed: int = 0,
    raw: bool = False,
    dataset_id: str = "",
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    num_envs: int | None = None,
) -> dict:
    """Run ``episodes`` deterministic episodes of sub-policy ``seed_index``.

    Args:
        env: a gymnasium env id or EnvSpec (e.g. ``OfflineData.env_spec``, from the Minari metadata).
        raw: act with the raw diffusion action μ^i_1 instead of the head's mean.
        seed: episode j is reset with ``seed + j`` (the same starts for every policy compared).

    Returns:
        {"dataset", "env", "seed_index", "raw", "returns", "lengths", "return_mean", "return_std",
        "score_mean", "score_std", "scores", "label"}; scores are None without reference returns.
    """
    from uepo.envs import run_episodes

    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if not 0 <= seed_index < policy.num_seeds:
        raise ValueError(f"seed_index must be in [0, {policy.num_seeds}), got {seed_index}")

    def act(hist: np.ndarray) -> np.ndarray:
        h = torch.as_tensor(hist, dtype=torch.float32)
        with torch.no_grad():
            if raw:
                a = policy.base_action(h, seed_index)
            else:
                a = policy.act(h, seed_index, deterministic=True)
        return a.clamp(-1, 1).numpy().astype(np.float64)

    returns, lengths = run_episodes(act, env, episodes, seed, history=policy.history, num_envs=num_envs)
    scores = normalized_score(returns, ref_min_score, ref_max_score)
    env_id = env if isinstance(env, str) else getattr(env, "id", str(env))
    result = {
        "dataset": dataset_id,
        "env": env_id,
        "seed_index": seed_index,
        "raw": raw,
        "episodes": episodes,
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "return_mean": float(returns.mean()),
        "return_std": float(returns.std()),
        "scores": None if scores is None else scores.tolist(),
        "score_mean": None if scores is None else float(scores.mean()),
        "score_std": None if scores is None else float(scores.std()),
    }
    what = f"raw μ^{seed_index}" if raw else f"sub-policy {seed_index}"
    score_text = "n/a" if scores is None else f"{result['score_mean']:.1f} ± {result['score_std']:.1f}"
    result["label"] = (f"{dataset_id} [{env_id}] {what}: normalised score {score_text} "
                       f"over {episodes} episodes")
    return result
