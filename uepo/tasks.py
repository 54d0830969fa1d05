"""Task knowledge in one place: which robot a dataset is, its family's settings, its termination rule
and its reference returns. Phases ask this module; none of them names a robot.

Families (SPEC §2–§3, Uni-O4's protocol):

| family | robots | dynamics width | H_ope | online lr_actor |
|---|---|---|---|---|
| locomotion | hopper, walker2d, halfcheetah | 200 | 200 | 2e-4 (SPEC §3E: 2e-5; docs/RESULTS.md 5d) |
| adroit | pen, door, hammer, relocate | 400 | 20 | 5e-6 |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

LOCOMOTION = ("hopper", "walker2d", "halfcheetah")
ADROIT = ("pen", "door", "hammer", "relocate")

# D4RL's reference returns (SPEC §1), used when a dataset's metadata has none.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "pen": (96.262799, 3076.83),
    "door": (-56.512833, 2880.57),
    "hammer": (-274.856578, 12794.13),
    "relocate": (-6.425911, 4233.88),
}


@dataclass(frozen=True)
class Family:
    name: str
    dynamics_hidden: int  # width of each dynamics member
    ope_horizon: int  # H_ope: AM-Q rollout length
    online_lr_actor: float  # PPO head learning rate (Uni-O4: 5e-6 for Adroit)


FAMILIES = {
    "locomotion": Family("locomotion", dynamics_hidden=200, ope_horizon=200, online_lr_actor=2e-4),
    "adroit": Family("adroit", dynamics_hidden=400, ope_horizon=20, online_lr_actor=5e-6),
}


def robot_name(env_id: str | None, dataset_id: str = "") -> str | None:
    """'hopper', 'walker2d', 'halfcheetah', 'pen', ... from an env id (or the dataset id)."""
    text = f"{env_id or ''} {dataset_id}".lower()
    for name in ("halfcheetah", "hopper", "walker2d", "pen", "door", "hammer", "relocate"):
        if name in text or (name == "walker2d" and "walker" in text):
            return name
    return None


def family(robot: str | None) -> Family:
    """The robot's family; an unknown robot is treated as locomotion (its settings are the defaults)."""
    return FAMILIES["adroit" if robot in ADROIT else "locomotion"]


# ---------------------------------------------------------------------------------------------
# Termination rules on raw states (Gymnasium MuJoCo v5 / gymnasium-robotics conventions)
# ---------------------------------------------------------------------------------------------

TerminationFn = Callable[[Tensor, Tensor, Tensor], Tensor]  # (obs, action, next_obs) raw -> done (N,) bool


def termination_fn(robot: str | None) -> TerminationFn:
    """The task's termination rule; a non-finite predicted state always terminates."""
    if robot == "hopper":  # healthy: z > 0.7, |angle| < 0.2, |state| < 100 (velocities are clipped to ±10)
        def hopper(obs: Tensor, act: Tensor, nxt: Tensor) -> Tensor:
            z, angle = nxt[:, 0], nxt[:, 1]
            healthy = (z > 0.7) & (angle.abs() < 0.2) & (nxt[:, 1:].abs() < 100).all(-1)
            return ~healthy | ~torch.isfinite(nxt).all(-1)
        return hopper
    if robot == "walker2d":  # healthy: 0.8 < z < 2, |angle| < 1
        def walker(obs: Tensor, act: Tensor, nxt: Tensor) -> Tensor:
            z, angle = nxt[:, 0], nxt[:, 1]
            healthy = (z > 0.8) & (z < 2.0) & (angle > -1.0) & (angle < 1.0)
            return ~healthy | ~torch.isfinite(nxt).all(-1)
        return walker
    if robot == "halfcheetah" or robot in ADROIT:  # these envs never terminate (only time limits)
        def never(obs: Tensor, act: Tensor, nxt: Tensor) -> Tensor:
            return ~torch.isfinite(nxt).all(-1)
        return never
    raise ValueError(
        f"no termination function for robot {robot!r}: uepo knows hopper, walker2d, halfcheetah and the "
        "Adroit tasks (pen, door, hammer, relocate); add one to uepo.tasks.termination_fn"
    )


# ---------------------------------------------------------------------------------------------
# Normalised scores (SPEC §1): one normaliser for the phases, the evaluation and the CLI
# ---------------------------------------------------------------------------------------------


def reference_scores(env_id: str | None, dataset_id: str = "",
                     metadata: dict | None = None) -> tuple[float, float] | None:
    """(ref_min, ref_max) from the dataset's metadata, else D4RL's constants for its robot, else None."""
    meta = metadata or {}
    if meta.get("ref_min_score") is not None and meta.get("ref_max_score") is not None:
        return float(meta["ref_min_score"]), float(meta["ref_max_score"])
    return D4RL_REF_SCORES.get(robot_name(env_id, dataset_id) or "")


def normalized_score(returns: np.ndarray | Tensor | float,
                     ref: tuple[float | None, float | None] | None) -> np.ndarray | None:
    """100·(R − ref_min)/(ref_max − ref_min); None without reference returns."""
    if ref is None or ref[0] is None or ref[1] is None:
        return None
    r = np.asarray(returns.cpu() if isinstance(returns, Tensor) else returns, dtype=np.float64)
    return 100.0 * (r - ref[0]) / (ref[1] - ref[0])
