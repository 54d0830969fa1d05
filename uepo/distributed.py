"""One run on several processes with ``torchrun`` (torch.distributed): gloo on the CPU, NCCL on GPUs.

    torchrun --nproc_per_node 2 -m uepo.train --preset smoke ...            # one machine
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29500 -m uepo.train --device cuda ...           # on each machine

How the phases split the work (a single process takes none of these paths: every function here is
the identity when the world has one process):

- A–C are data-parallel. Every rank draws the same global batch from the same generator and keeps
  its slice (``shard``), so the ranks together see exactly the batch one process would; gradients
  are averaged across ranks as they are accumulated (``average_gradients``), before any clipping, as
  DDP does. Parameters start equal (the same phase seed) and stay equal. The two-process run therefore
  follows the one-process run up to the order of floating-point sums.
- D gives each rank its own sub-policies (i ≡ rank mod world): they are independent until selection.
  Each sub-policy then draws from its own seeded streams, and the ranks gather the AM-Q values and the
  accepted heads before selecting.
- Evaluation, the online phase, logs, plots, summary and shared checkpoints are rank 0's; the other
  ranks write only their own ``*_rank<r>`` progress checkpoints, and wait at phase boundaries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class World:
    """This process's place among the run's processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def shard(self, batch: Tensor) -> Tensor:
        """This rank's rows of a global batch (all of it in one process)."""
        return batch[self.rank::self.size] if self.parallel else batch

    def owns(self, index: int) -> bool:
        """Whether this rank trains item ``index`` of a list split across ranks (sub-policies in D)."""
        return index % self.size == self.rank

    def gather(self, local: Tensor) -> Tensor:
        """Every rank's ``local`` (equal shapes) concatenated along dim 0, on every rank."""
        if not self.parallel:
            return local
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous())
        return torch.cat(parts)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order, on every rank."""
        if not self.parallel:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, values: dict[str, float], device: torch.device) -> dict[str, float]:
        """The mean over ranks of each value (metrics rows are reduced before rank 0 logs them)."""
        if not self.parallel or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.size).tolist(), strict=True))

    def barrier(self) -> None:
        if self.parallel:
            dist.barrier()


SINGLE = World()


def average_gradients(world: World, *modules: nn.Module) -> None:
    """Average each parameter's gradient over the ranks as soon as backward has accumulated it."""
    if not world.parallel:
        return
    for module in modules:
        for p in module.parameters():
            if p.requires_grad:
                p.register_post_accumulate_grad_hook(_all_reduce_mean(world.size))


def _all_reduce_mean(size: int):
    def hook(p: Tensor) -> None:
        dist.all_reduce(p.grad)
        p.grad.div_(size)
    return hook


def init(device: str) -> tuple[World, str]:
    """Join the process group torchrun set up (``WORLD_SIZE`` > 1), else the single-process world; returns
    the world and this rank's device (``cuda`` becomes ``cuda:<local rank>``)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return SINGLE, device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return World(rank, size, local), device


def close(world: World) -> None:
    if world.parallel and dist.is_initialized():
        dist.destroy_process_group()
