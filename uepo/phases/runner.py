"""The one loop every phase trains in: progress bar, metrics rows, finite-loss checks, progress
checkpoints and resume live here, once; a phase is a small ``Trainer`` (CORL's and d3rlpy's shape).

A trainer does one unit of work per ``step`` (an IQL update, a diffusion update, a dynamics epoch,
a BPPO update, a PPO rollout + update) and returns that step's losses; ``metrics`` gives the row
logged every ``log_every`` steps; ``state_dict``/``load_state_dict`` hold what a resumed run needs,
apart from the batch generator and the global RNGs, which the loop saves beside them. A progress
checkpoint is ``{**trainer.state_dict(), "generator", "rng", "step"}``, so a phase killed at any
moment and run again continues to the bit-identical result on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from uepo.distributed import average_gradients
from uepo.phases import PhaseContext, restore, snapshot
from uepo.runs import check_finite


class Trainer:
    """One phase's training as the loop sees it. Subclasses set the attributes in ``__init__``."""

    phase: str  # metrics.csv's phase column
    checkpoint: str  # progress checkpoint: checkpoints/<checkpoint>.pt
    label: str  # progress bar text
    total: int  # steps in all (the bar's length; ``finished`` may stop earlier)
    generator: torch.Generator  # the phase's batch generator (saved with each checkpoint)
    log_every: int = 1
    checkpoint_every: int = 0  # 0: no progress checkpoints
    step_offset: int = 0  # metrics.csv step = step_offset + steps done
    key_prefix: str = ""  # this trainer's metric keys start with it (resume drops only those rows)
    shown: tuple[str, ...] = ()  # metric keys shown beside the progress bar
    data_parallel: bool = True  # in a torchrun run: a shard of each batch per rank, gradients and metrics averaged

    def parallel_modules(self) -> tuple[torch.nn.Module, ...]:
        """The trained modules whose gradients are averaged across ranks (data-parallel trainers)."""
        return ()

    def step(self, step: int) -> dict[str, Tensor | float]:
        """Do step ``step`` (0-based); return its losses by name (the loop stops on a non-finite one)."""
        raise NotImplementedError

    def metrics(self, losses: dict[str, Tensor | float]) -> dict[str, float]:
        """The metrics row after a logged step (a trainer may evaluate here)."""
        return {k: float(v) for k, v in losses.items()}

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def postfix(self, row: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows beside it after a logged step."""
        return {k: f"{row[k]:.4g}" for k in self.shown if k in row}

    def resumes(self, state: dict[str, Any]) -> bool:
        """Whether a progress checkpoint found on disk is this trainer's (else it starts fresh)."""
        return True

    def metric_step(self, done: int) -> int:
        """metrics.csv's step column after ``done`` steps."""
        return self.step_offset + done

    def finished(self, done: int) -> bool:
        return done >= self.total

    def should_log(self, done: int) -> bool:
        return done % self.log_every == 0 or self.finished(done)

    def should_checkpoint(self, done: int) -> bool:
        return self.checkpoint_every > 0 and done % self.checkpoint_every == 0 and not self.finished(done)


def train(ctx: PhaseContext, trainer: Trainer) -> int:
    """Run ``trainer`` from its progress checkpoint (if any) until it is finished; returns steps done."""
    run, world = ctx.run, ctx.world
    world.barrier()  # every rank sees the same checkpoints
    if trainer.data_parallel:
        average_gradients(world, *trainer.parallel_modules())
    autocast = accelerate(ctx, trainer)
    done = 0
    saved = run.load_checkpoint(trainer.checkpoint)
    if saved is not None and trainer.resumes(saved):
        trainer.load_state_dict(saved)
        restore(saved, trainer.generator)
        done = saved["step"] if "step" in saved else saved["epoch"]  # dynamics checkpoints of v1 say epoch
    run.drop_metrics(trainer.phase, trainer.metric_step(done), trainer.key_prefix)
    bar = ctx.bar(trainer.label, trainer.total, done)
    while not trainer.finished(done):
        with autocast():
            losses = trainer.step(done)
        for name, value in losses.items():
            check_finite(value, trainer.phase, done, name)
        done += 1
        bar.update(1)
        if trainer.should_log(done):
            row = trainer.metrics(losses)
            if trainer.data_parallel:
                row = world.mean(row, ctx.device)
            run.log(trainer.phase, trainer.metric_step(done), **row)
            bar.set_postfix(trainer.postfix(row))
        if trainer.should_checkpoint(done):
            run.save_checkpoint(trainer.checkpoint, {**trainer.state_dict(), **snapshot(trainer.generator),
                                                     "step": done})
    bar.close()
    return done


def accelerate(ctx: PhaseContext, trainer: Trainer) -> Callable[[], contextlib.AbstractContextManager]:
    """What ``--compile`` and ``--amp bf16`` do to the trainers of phases A–C (the data-parallel ones):
    compile their networks in place (nn.Module.compile: the state_dict keys stay), and return the context
    each step runs in (bfloat16 autocast: matmuls in bf16, weights, reductions and optimiser in float32)."""
    if not trainer.data_parallel:
        return contextlib.nullcontext
    if ctx.cfg.compile:
        for module in trainer.parallel_modules():
            module.compile()
    if ctx.cfg.amp == "off":
        return contextlib.nullcontext
    return lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)
