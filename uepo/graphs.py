"""CUDA graphs for fixed-shape steps (``torch.cuda.graphs``): capture a step once, replay it with new inputs.

At B = 1 a step of the acting loop is a few dozen small kernels, and launching them costs more than
running them; a replayed graph launches them all at once. Used by phase E (``--online.cuda_graph``)
and by ``benchmarks/gpu.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def capture(fn: Callable[..., Tensor | tuple[Tensor, ...]], *example_inputs: Tensor,
            warmup: int = 3) -> Callable[..., Tensor | tuple[Tensor, ...]]:
    """``fn(*inputs)`` (CUDA tensors in, a tensor or a tuple out) captured in a CUDA graph.

    Returns ``replay(*inputs)``: it copies the inputs into the graph's own, replays the graph and
    returns clones of its outputs (the next replay overwrites them). Shapes, dtypes and device are
    those of ``example_inputs``. ``fn`` must not wait on the host (no ``.item()``, no CPU tensors);
    parameters it reads are read where they live, so in-place updates (an optimiser step) are seen.
    Random draws in ``fn`` advance the CUDA generator at every replay, as eager calls do, but the
    warm-up calls draw too, so the stream is not the eager one's.
    """
    if any(x.device.type != "cuda" for x in example_inputs):
        raise ValueError("graphs.capture replays GPU work: every example input must be a CUDA tensor")
    static = [x.detach().clone() for x in example_inputs]
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # the warm-up that torch.cuda.graphs asks for (lazy init, cuBLAS handles)
        for _ in range(warmup):
            fn(*static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*static)
    single = isinstance(out, Tensor)
    outputs = (out,) if single else tuple(out)

    def replay(*inputs: Tensor) -> Tensor | tuple[Tensor, ...]:
        for slot, x in zip(static, inputs, strict=True):
            slot.copy_(x)
        graph.replay()
        cloned = tuple(o.clone() if isinstance(o, Tensor) else o for o in outputs)
        return cloned[0] if single else cloned

    return replay
