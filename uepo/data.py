"""Minari datasets as flat transition arrays with chunk/history windows (SPEC §1).

``load_offline_data(id)`` reads every episode once into flat tensors (step i of the dataset is
``obs[i] -> actions[i] -> next_obs[i]``), keeps terminations apart from truncations, freezes the
state statistics and records provenance. ``chunks`` and ``histories`` build the action chunks
``A_t = a_{t:t+H-1}`` (padded past the episode end with the last action, plus a mask) and state
histories ``S_t = s_{t-T_o+1:t}`` (padded at the start with the first state) for any indices.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from uepo import tasks
from uepo.tasks import D4RL_REF_SCORES, robot_name  # noqa: F401 (re-exported)

STATE_STD_EPS = 1e-6  # added to the state std (SPEC §1)


class DatasetError(ValueError):
    """The dataset cannot be used; the message says what to do."""


@dataclass
class OfflineData:
    """All transitions of a dataset, flat, as float32 tensors, plus the episode bookkeeping."""

    dataset_id: str
    env_id: str | None
    env_spec: Any  # gymnasium EnvSpec (the dataset's eval env), or None
    obs: Tensor  # (N, d_s) raw states
    actions: Tensor  # (N, d_a) clipped to ±(1 - action_clip)
    rewards: Tensor  # (N,)
    next_obs: Tensor  # (N, d_s)
    terminals: Tensor  # (N,) 1.0 where the env terminated (no bootstrap); truncations are not terminals
    timeouts: Tensor  # (N,) 1.0 where the episode was truncated
    episode_start: Tensor  # (N,) long: flat index of the first step of this step's episode
    episode_end: Tensor  # (N,) long: flat index one past the last step of this step's episode
    episode_returns: Tensor  # (E,) undiscounted return of each episode
    obs_mean: Tensor  # (d_s,) frozen statistics
    obs_std: Tensor  # (d_s,)
    ref_min_score: float | None
    ref_max_score: float | None
    provenance: dict = field(default_factory=dict)

    DEVICE_FIELDS = ("obs", "actions", "rewards", "next_obs", "terminals", "timeouts", "obs_mean", "obs_std")

    @property
    def size(self) -> int:
        return self.obs.shape[0]

    @property
    def obs_dim(self) -> int:
        return self.obs.shape[1]

    @property
    def action_dim(self) -> int:
        return self.actions.shape[1]

    @property
    def robot(self) -> str | None:
        return robot_name(self.env_id, self.dataset_id)

    @property
    def device(self) -> torch.device:
        return self.obs.device

    def to(self, device: torch.device | str) -> OfflineData:
        """A copy with the float tensors on ``device``; the episode bookkeeping stays on the CPU, where
        index arithmetic on CPU-drawn batch indices happens (indexing a GPU tensor with them is fine)."""
        moved = {f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)
                 if f.name in self.DEVICE_FIELDS}
        return dataclasses.replace(self, **moved)

    def normalize(self, obs: Tensor) -> Tensor:
        return (obs - self.obs_mean) / self.obs_std

    def chunks(self, idx: Tensor, horizon: int) -> tuple[Tensor, Tensor]:
        """Action chunks (B, H, d_a) from each index, repeating the episode's last action; mask (B, H)."""
        idx = idx.cpu()  # index arithmetic with the CPU bookkeeping
        steps = idx[:, None] + torch.arange(horizon)[None]
        last = self.episode_end[idx][:, None] - 1
        mask = steps <= last
        return self.actions[torch.minimum(steps, last)], mask.to(self.device)

    def histories(self, idx: Tensor, history: int) -> Tensor:
        """Raw state histories (B, T_o, d_s), oldest first, repeating the episode's first state."""
        idx = idx.cpu()
        steps = idx[:, None] + torch.arange(-history + 1, 1)[None]
        first = self.episode_start[idx][:, None]
        return self.obs[torch.maximum(steps, first)]

    def next_histories(self, idx: Tensor, history: int) -> Tensor:
        """State histories ending at next_obs[idx] (B, T_o, d_s)."""
        h = self.histories(idx, history)
        return torch.cat([h[:, 1:], self.next_obs[idx][:, None]], dim=1)

    def cond(self, idx: Tensor, history: int) -> Tensor:
        """Normalised, flattened state histories (B, T_o·d_s): the denoiser's condition."""
        return self.normalize(self.histories(idx, history)).reshape(idx.shape[0], -1)

    def normalized_score(self, returns: np.ndarray | Tensor | float) -> np.ndarray:
        """100·(R − ref_min)/(ref_max − ref_min) (SPEC §1)."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DatasetError(
                f"dataset {self.dataset_id} has no reference scores (ref_min_score/ref_max_score in its "
                "metadata) and its robot has no D4RL constants, so normalised scores are undefined; "
                "compare raw returns instead"
            )
        return tasks.normalized_score(returns, (self.ref_min_score, self.ref_max_score))


def load_minari(dataset_id: str, download: bool = False) -> Any:
    """``minari.load_dataset`` with errors that say what to do."""
    import minari

    from uepo.datasets import use_shipped_dataset

    previous = os.environ.get("MINARI_DATASETS_PATH")
    root = previous or "~/.minari/datasets"
    try:
        use_shipped_dataset(dataset_id)  # points Minari at the package's copy if the id is shipped
        return minari.load_dataset(dataset_id, download=download)
    except FileNotFoundError as exc:
        raise DatasetError(
            f"Minari dataset {dataset_id!r} is not in {root}. Set MINARI_DATASETS_PATH to the folder "
            "that holds it (e.g. /work/shared/datasets for local/hopper/medium-v0), or pass --download "
            "to fetch a remote id such as mujoco/hopper/medium-v0"
        ) from exc
    except Exception as exc:  # network failures, unknown remote ids, corrupt files
        raise DatasetError(f"could not load Minari dataset {dataset_id!r}: {exc}") from exc
    finally:  # leave the caller's MINARI_DATASETS_PATH as it was
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def _space_is_flat_box(space: Any) -> bool:
    import gymnasium as gym

    return isinstance(space, gym.spaces.Box) and len(space.shape) == 1


def load_offline_data(dataset_id: str, download: bool = False, action_clip: float = 1e-5,
                      dataset: Any = None) -> OfflineData:
    """Read a Minari dataset into an ``OfflineData`` (pass ``dataset`` to skip loading by id)."""
    ds = dataset if dataset is not None else load_minari(dataset_id, download)
    if not _space_is_flat_box(ds.action_space):
        raise DatasetError(
            f"dataset {dataset_id} has action space {ds.action_space}: uepo needs continuous actions "
            "(a flat gymnasium Box); discrete-action datasets are not supported"
        )
    if not _space_is_flat_box(ds.observation_space):
        raise DatasetError(
            f"dataset {dataset_id} has observation space {ds.observation_space}: uepo needs flat Box "
            "observations; flatten dict observations when making the dataset"
        )
    low, high = np.asarray(ds.action_space.low), np.asarray(ds.action_space.high)
    if not (np.allclose(low, -1) and np.allclose(high, 1)):
        raise DatasetError(
            f"dataset {dataset_id} has action bounds [{low.min()}, {high.max()}]; uepo expects actions in "
            "[-1, 1] (rescale them when making the dataset)"
        )

    obs, act, rew, nxt, term, trunc, starts, ends, returns = [], [], [], [], [], [], [], [], []
    offset = 0
    for ep in ds.iterate_episodes():
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            if getattr(ep, name, None) is None:
                raise DatasetError(f"dataset {dataset_id} episode {ep.id} lacks {name!r}; uepo needs "
                                   "observations, actions, rewards, terminations and truncations")
        o = np.asarray(ep.observations, dtype=np.float64)
        n = len(ep.actions)
        if n == 0:
            continue
        if o.shape[0] != n + 1:
            raise DatasetError(f"dataset {dataset_id} episode {ep.id}: {o.shape[0]} observations for {n} "
                               "actions (Minari stores one more observation than actions)")
        obs.append(o[:-1])
        nxt.append(o[1:])
        act.append(np.asarray(ep.actions, dtype=np.float64).reshape(n, -1))
        rew.append(np.asarray(ep.rewards, dtype=np.float64))
        term.append(np.asarray(ep.terminations, dtype=np.float64))
        trunc.append(np.asarray(ep.truncations, dtype=np.float64))
        starts.append(np.full(n, offset))
        ends.append(np.full(n, offset + n))
        returns.append(float(np.sum(ep.rewards)))
        offset += n
    if offset == 0:
        raise DatasetError(f"dataset {dataset_id} holds no transitions")

    obs_np, act_np = np.concatenate(obs), np.concatenate(act)
    rew_np, nxt_np = np.concatenate(rew), np.concatenate(nxt)
    for name, arr in (("observations", obs_np), ("actions", act_np), ("rewards", rew_np)):
        if not np.isfinite(arr).all():
            raise DatasetError(f"dataset {dataset_id} has non-finite {name}; clean it before training")
    bound = 1.0 - action_clip
    act_np = np.clip(act_np, -bound, bound)

    digest = hashlib.sha256()
    for arr in (obs_np, act_np, rew_np, np.concatenate(term), np.concatenate(trunc)):
        digest.update(np.ascontiguousarray(arr).tobytes())

    def t(x: np.ndarray) -> Tensor:
        return torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)

    env_spec = getattr(ds.spec, "eval_env_spec", None) or getattr(ds.spec, "env_spec", None)
    env_id = env_spec.id if env_spec is not None else None
    meta = ds.storage.metadata
    ref = tasks.reference_scores(env_id, dataset_id, meta)
    ref_min, ref_max = ref if ref is not None else (None, None)
    has_meta = meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None
    ref_source = "metadata" if has_meta else ("d4rl-constants" if ref is not None else "none")
    obs_t = t(obs_np)
    returns_np = np.asarray(returns)
    data = OfflineData(
        dataset_id=dataset_id, env_id=env_id, env_spec=env_spec,
        obs=obs_t, actions=t(act_np), rewards=t(rew_np), next_obs=t(nxt_np),
        terminals=t(np.concatenate(term)), timeouts=t(np.concatenate(trunc)),
        episode_start=torch.as_tensor(np.concatenate(starts), dtype=torch.long),
        episode_end=torch.as_tensor(np.concatenate(ends), dtype=torch.long),
        episode_returns=torch.as_tensor(returns_np, dtype=torch.float64),
        obs_mean=t(obs_np.mean(0)), obs_std=t(obs_np.std(0) + STATE_STD_EPS),
        ref_min_score=None if ref_min is None else float(ref_min),
        ref_max_score=None if ref_max is None else float(ref_max),
    )
    data.provenance = {
        "dataset_id": dataset_id,
        "env_id": env_id,
        "total_steps": int(offset),
        "total_episodes": len(returns),
        "content_sha256": digest.hexdigest(),
        "ref_min_score": data.ref_min_score,
        "ref_max_score": data.ref_max_score,
        "ref_source": ref_source,
        "minari_version": meta.get("minari_version"),
        "episode_return_mean": float(returns_np.mean()),
        "episode_return_std": float(returns_np.std()),
    }
    if data.ref_min_score is not None:
        scores = data.normalized_score(returns_np)
        data.provenance["episode_score_mean"] = float(scores.mean())
        data.provenance["episode_score_std"] = float(scores.std())
    return data
