"""PPO's pieces, apart from the agent and the phase that use them (uepo.phases.online): generalised
advantage estimation, the clipped policy and value losses, the Gaussian log-density, and the rollout
buffer. Shapes: (T, N) for T steps of N vector envs; actions (T, N, d_a).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

HALF_LOG_2PI = math.log(math.sqrt(2 * math.pi))  # as torch.distributions.Normal.log_prob writes it


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, ended: Tensor,
        gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over a (T, N) rollout.

    ``next_values[t]`` is V of the state that followed step t (the episode's final state when it
    ended at t). δ_t = r_t + γ (1 − terminated_t) V(s'_t) − V(s_t): a truncated episode is
    bootstrapped, a terminated one is not; the recursion A_t = δ_t + γλ A_{t+1} stops where any
    episode ended (``ended`` = terminated or truncated). Returns advantages and value targets.
    """
    not_term, not_end = 1.0 - terminated.to(rewards.dtype), 1.0 - ended.to(rewards.dtype)
    deltas = rewards + gamma * not_term * next_values - values
    adv = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        running = deltas[t] + gamma * lam * not_end[t] * running
        adv[t] = running
    return adv, adv + values


def gaussian_log_prob(action: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """log N(a; mean, diag scale²) summed over the last dim, as torch.distributions.Normal.log_prob
    writes it (the same numbers, elementwise, at any batch shape)."""
    return (-((action - mean) ** 2) / (2 * scale**2) - scale.log() - HALF_LOG_2PI).sum(-1)


def clipped_policy_loss(logp: Tensor, old_logp: Tensor, adv: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """PPO's clipped surrogate, to minimise: mean max(−A r, −A clip(r, 1±ε)); also the clip fraction."""
    ratio = (logp - old_logp).exp()
    loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
    return loss, ((ratio - 1).abs() > clip).float().mean()


def clipped_value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float) -> Tensor:
    """½ mean max((V − R)², (V_old + clip(V − V_old, ±c) − R)²); plain ½ MSE when clip ≤ 0."""
    if clip <= 0:
        return 0.5 * ((values - returns) ** 2).mean()
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2).mean()


# ---------------------------------------------------------------------------------------------
# Rollout buffer
# ---------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """(T, N, ...) tensors of one rollout; obs are normalised last states, base μ^{i*}_1 as acted,
    hist the raw state histories (to recompute μ^{i*}_1 when the backbone trains)."""

    hist: Tensor
    obs: Tensor
    base: Tensor
    actions: Tensor
    logp: Tensor
    values: Tensor
    rewards: Tensor
    next_values: Tensor
    terminated: Tensor
    ended: Tensor
