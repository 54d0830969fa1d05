"""The offline phases (SPEC §3 A–D), each a function that reads the previous phases' artefacts
and returns its own. Shared here: the context every phase receives and the resumable-loop helpers; the loop itself
is ``uepo.phases.runner``.

Resumption convention: a phase saves ``checkpoints/<phase>_progress.pt`` every
``checkpoint_every`` steps (models, EMA, optimisers, schedulers, its batch generator, the global
RNG, the step counter) and ``checkpoints/<phase>.pt`` when done. Run again in the same run
directory, a finished phase is loaded instead of retrained and an unfinished one continues from
its progress checkpoint; with equal seeds the result equals an uninterrupted run on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tqdm import tqdm

from uepo.config import Config, resolve_by_policy
from uepo.data import OfflineData
from uepo.distributed import SINGLE, World
from uepo.runs import Run, capture_rng, restore_rng
from uepo.seeds import phase_seed


@dataclass
class PhaseContext:
    run: Run
    cfg: Config
    data: OfflineData
    device: torch.device
    progress: bool = True  # show tqdm bars
    world: World = SINGLE  # this process's place in a torchrun run (uepo.distributed)

    def __post_init__(self) -> None:
        self.cfg = resolve_by_policy(self.cfg)  # a phase reads a by-policy field's value, never its -1

    def generator(self, phase: str) -> torch.Generator:
        """The phase's own batch generator (on the CPU, whatever the device: the same draws everywhere),
        seeded from the run seed (uepo.seeds) and saved in checkpoints."""
        return torch.Generator().manual_seed(phase_seed(self.cfg.seed, phase))

    def randn(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        """Standard normal draws from a CPU generator, on the phase's device."""
        return torch.randn(shape, generator=generator).to(self.device)

    def randint(self, high: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, high, shape, generator=generator).to(self.device)

    def bar(self, phase: str, total: int, initial: int = 0) -> tqdm:
        return tqdm(total=total, initial=initial, desc=phase, disable=not (self.progress and self.world.main),
                    dynamic_ncols=True, leave=True, mininterval=1.0)


def sample_indices(size: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, size, (batch,), generator=generator)


class BatchSampler:
    """Uniform dataset indices, with some rows drawn from the first ``start_steps`` steps of episodes:
    those states are rare (one episode in a few hundred steps) and decide where the rest of an episode
    goes. ``start_fraction`` draws that share of each batch from them whatever the data holds;
    ``start_floor`` tops a batch up only where the data holds fewer, so that they make at least that share
    (datasets of many short episodes are left as they are). The drawn rows come first: ``extra_rows(batch)``
    of them. Both 0 is exactly ``sample_indices``."""

    def __init__(self, data: OfflineData, start_fraction: float = 0.0, start_steps: int = 25,
                 start_floor: float = 0.0):
        self.size, self.start_fraction, self.start_floor = data.size, start_fraction, start_floor
        step_in_episode = torch.arange(data.size) - data.episode_start
        self.start_pool = torch.nonzero(step_in_episode < start_steps).squeeze(1)
        self.natural_share = self.start_pool.shape[0] / data.size

    def extra_rows(self, batch: int) -> int:
        """How many of a batch's first rows are drawn from the start pool: the uniform rest holds the
        natural share ν, so k rows make the start share k/B + (1 − k/B) ν = start_floor."""
        k_floor = batch * (self.start_floor - self.natural_share) / max(1.0 - self.natural_share, 1e-12)
        return max(round(self.start_fraction * batch), round(k_floor), 0)

    def __call__(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        idx = sample_indices(self.size, batch, generator)
        k = self.extra_rows(batch)
        if k > 0:
            pick = torch.randint(0, self.start_pool.shape[0], (k,), generator=generator)
            idx[:k] = self.start_pool[pick]
        return idx


def snapshot(gen: torch.Generator, **stateful: Any) -> dict[str, Any]:
    """The resumable part of a progress checkpoint: each named object's ``state_dict()``, the phase's
    batch generator and the global RNGs. ``restore`` puts them back, so a resumed phase draws exactly
    what the uninterrupted one would have."""
    return {**{name: obj.state_dict() for name, obj in stateful.items()}, "generator": gen.get_state(),
            "rng": capture_rng()}


def restore(state: dict[str, Any], gen: torch.Generator, **stateful: Any) -> None:
    """Undo ``snapshot``: load each named object's state, then the batch generator and the global RNGs."""
    for name, obj in stateful.items():
        obj.load_state_dict(state[name])
    gen.set_state(state["generator"])
    restore_rng(state["rng"])


def optimizer_state(opts: dict[str, Any]) -> dict[str, Any]:
    return {k: v.state_dict() for k, v in opts.items()}


def load_optimizer_state(opts: dict[str, Any], states: dict[str, Any]) -> None:
    for k, v in opts.items():
        v.load_state_dict(states[k])
