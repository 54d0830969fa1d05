"""The Python API: train with ``uepo.fit``, act with ``uepo.load_policy`` (d3rlpy's shape).

    import uepo
    cfg = uepo.preset("bench"); cfg.dataset = "mujoco/hopper/medium-v0"; cfg.download = True
    run = uepo.fit(cfg)                                   # phases A–E, in run.dir
    policy = uepo.load_policy(run.dir)                    # the latest policy of the run
    action = policy.act(obs_history)                      # (T_o, d_s) -> (d_a,), or batched
    policy.save("hopper.pt"); uepo.load_policy("hopper.pt")

``python -m uepo.train`` is the same ``fit`` behind a command line (``uepo.cli``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from uepo.config import Config, apply_overrides, preset
from uepo.policy import MultiSeedPolicy
from uepo.runs import Run, atomic_torch_save


def fit(config: Config | str | None = None, *, dataset: str | None = None, progress: bool = True,
        **overrides: Any) -> Run:
    """Train: ``config`` is a ``Config``, a preset name, or None (the default preset); ``dataset`` and
    ``overrides`` ({section: {field: value}} or {field: value}) are applied on top. Returns the Run
    (``run.dir`` holds config.yaml, metrics.csv, checkpoints/, plots/, summary.json)."""
    from uepo.train import fit as fit_config

    cfg = preset(config) if isinstance(config, str) else (config or preset(Config().preset))
    if dataset is not None:
        cfg.dataset = dataset
    apply_overrides(cfg, overrides)
    return fit_config(cfg, progress=progress)


class Policy:
    """One trained sub-policy (the selected i* unless another is asked for), ready to act."""

    def __init__(self, bundle: dict, source: Path | None = None, sub_policy: int | None = None):
        self.bundle = bundle
        self.source = source
        self.model = MultiSeedPolicy.from_state(bundle["policy"])
        self.index = int(bundle["selected"]) if sub_policy is None else int(sub_policy)
        if not 0 <= self.index < self.model.num_seeds:
            raise ValueError(f"sub_policy must be in [0, {self.model.num_seeds}), got {self.index}")
        self.env_id: str = bundle["env_id"]

    @property
    def history(self) -> int:
        """T_o: how many past states ``act`` needs (oldest first)."""
        return self.model.history

    @property
    def status(self) -> str | None:
        """None for a finished policy; a sentence when it is an online policy stopped midway."""
        return unfinished_online(self.bundle)

    def act(self, obs_history: np.ndarray | torch.Tensor, deterministic: bool = True) -> np.ndarray:
        """Action(s) for raw state histories: (T_o, d_s) -> (d_a,), or (B, T_o, d_s) -> (B, d_a).

        A history shorter than T_o at an episode's start is padded by repeating its first state, as
        ``uepo.envs.ObservationHistory`` (see ``make_env``) and the training data do.
        """
        hist = torch.as_tensor(np.asarray(obs_history), dtype=torch.float32)
        single = hist.dim() == 2
        if single:
            hist = hist[None]
        if hist.dim() != 3 or hist.shape[-1] != self.model.obs_dim:
            raise ValueError(f"obs_history must have shape (T_o, {self.model.obs_dim}) or "
                             f"(B, T_o, {self.model.obs_dim}), got {tuple(np.shape(obs_history))}")
        if hist.shape[1] < self.history:
            hist = torch.cat([hist[:, :1].expand(-1, self.history - hist.shape[1], -1), hist], dim=1)
        action = self.model.act(hist[:, -self.history:], self.index, deterministic).numpy()
        return action[0] if single else action

    def make_env(self, render_mode: str | None = None):
        """The policy's environment, with observations as state histories of length T_o."""
        from uepo.envs import make_env

        return make_env(self.env_id, self.history, render_mode=render_mode)

    def save(self, path: str | Path) -> Path:
        """A policy file that ``load_policy`` and ``python -m uepo.evaluate`` read."""
        path = Path(path)
        bundle = {k: v for k, v in self.bundle.items() if k in ("value", "dataset", "done", "counters", "config")}
        bundle.update(policy=self.model.state(), selected=self.index, env_id=self.env_id)
        atomic_torch_save(bundle, path)
        return path


def load_policy(path: str | Path, sub_policy: int | None = None) -> Policy:
    """The policy in a run directory (checkpoints/online.pt, else offline.pt) or a policy file.

    Warns when the run stopped in the middle of its online phase: that policy is not the final one.
    """
    from uepo.evaluate import load_bundle

    bundle, source = load_bundle(path)
    policy = Policy(bundle, source, sub_policy)
    if policy.status:
        warnings.warn(f"uepo.load_policy({path}): {policy.status}", stacklevel=2)
    return policy


def unfinished_online(bundle: dict) -> str | None:
    """A sentence saying that ``bundle`` is an online checkpoint of a phase E that did not finish."""
    if "counters" not in bundle or bundle.get("done", True):
        return None
    steps = bundle["counters"].get("env_steps")
    total = (bundle.get("config") or {}).get("env_steps")
    return (f"this is an unfinished online policy (phase E stopped at {steps} of {total} env steps); "
            "resume the run to finish it, or pass its checkpoints/offline.pt for the offline policy")
