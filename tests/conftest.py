"""Shared fixtures: tiny Minari datasets made here with Minari's own API, in a temporary
MINARI_DATASETS_PATH, so the suite needs nothing from outside."""

from __future__ import annotations

import dataclasses
import os

import gymnasium as gym
import minari
import numpy as np
import pytest
import torch
from minari.data_collector import EpisodeBuffer

torch.set_num_threads(1)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an id that is not local fails at once

HOPPER_REF = (-20.272305, 3234.3)


def hopper_controller(obs: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """A crude stabilising feedback law plus noise: structured behaviour data, not random actions."""
    angle, thigh, leg, foot = obs[1], obs[2], obs[3], obs[4]
    ang_vel = obs[7]
    a = np.array([-2.0 * (thigh + angle) - 0.2 * ang_vel, -1.5 * leg, -1.0 * foot])
    return np.clip(a + noise * rng.standard_normal(3), -1, 1).astype(np.float32)


def collect_buffers(env_id: str, steps: int, seed: int, max_episode_steps: int | None = None,
                    noise: float = 0.3, policy=None) -> list[EpisodeBuffer]:
    """Whole episodes of ``env_id`` (the last one cut when ``steps`` is reached, as a truncation)."""
    env = gym.make(env_id, max_episode_steps=max_episode_steps) if max_episode_steps else gym.make(env_id)
    rng = np.random.default_rng(seed)
    buffers, total, episode = [], 0, 0
    while total < steps:
        obs, _ = env.reset(seed=seed + episode)
        o, a, r, te, tr = [obs], [], [], [], []
        while True:
            act = policy(obs, rng) if policy else hopper_controller(obs, rng, noise)
            obs, rew, terminated, truncated, _ = env.step(act)
            total += 1
            truncated = truncated or (total >= steps and not terminated)
            o.append(obs), a.append(act), r.append(rew), te.append(terminated), tr.append(truncated)
            if terminated or truncated:
                break
        buffers.append(EpisodeBuffer(id=episode, observations=np.array(o), actions=np.array(a),
                                     rewards=r, terminations=te, truncations=tr))
        episode += 1
    env.close()
    return buffers


def make_dataset(dataset_id: str, env_id: str = "Hopper-v5", steps: int = 400, seed: int = 0,
                 ref_scores: tuple[float, float] | None = HOPPER_REF, record_episode_steps: bool = False,
                 **kwargs) -> str:
    """A Minari dataset of ``steps`` steps; ``record_episode_steps`` stores the collection's episode cap in
    the env spec (as Minari's D4RL sets do, e.g. 100 steps for pen) instead of the registry's."""
    buffers = collect_buffers(env_id, steps, seed, **kwargs)
    extra = {} if ref_scores is None else {"ref_min_score": ref_scores[0], "ref_max_score": ref_scores[1]}
    env = env_id
    if record_episode_steps:
        env = dataclasses.replace(gym.spec(env_id), max_episode_steps=kwargs["max_episode_steps"])
    minari.create_dataset_from_buffers(dataset_id, buffers, env=env, algorithm_name="test controller",
                                       author="uepo tests", author_email="none@example.com",
                                       code_permalink="tests/conftest.py", description="uepo test data",
                                       **extra)
    return dataset_id


@pytest.fixture(scope="session")
def minari_root(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("minari_datasets")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    return str(root)


@pytest.fixture(scope="session")
def tiny_hopper(minari_root) -> str:
    """~400 steps of Hopper-v5 under a noisy controller, episodes capped at 60 steps (truncations)."""
    return make_dataset("test/hopper/tiny-v0", steps=400, seed=0, max_episode_steps=60)


def smooth_random_policy(action_dim: int, smoothing: float = 0.8):
    """Correlated random actions (a random gait): behaviour data for robots without a controller here."""
    state = {"a": np.zeros(action_dim)}

    def act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        state["a"] = smoothing * state["a"] + (1 - smoothing) * rng.uniform(-1, 1, action_dim) * 2
        return np.clip(state["a"], -1, 1).astype(np.float32)
    return act


@pytest.fixture(scope="session")
def tiny_cheetah(minari_root) -> str:
    """~1200 steps of HalfCheetah-v5 (a robot that never terminates), episodes truncated at 200 steps."""
    return make_dataset("test/halfcheetah/tiny-v0", env_id="HalfCheetah-v5", steps=1200, seed=0,
                        max_episode_steps=200, ref_scores=(-280.178953, 12135.0),
                        policy=smooth_random_policy(6))


@pytest.fixture(scope="session")
def shipped_hopper() -> str:
    """The 60-episode Hopper set shipped with uepo (real medium data, ~19k steps)."""
    from uepo.datasets import DEFAULT_DATASET_ID

    return DEFAULT_DATASET_ID
