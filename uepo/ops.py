"""The fused ops, their pure-PyTorch references, and the glue that picks one.

``uepo._C`` registers ``torch.ops.uepo.divergence`` (+ backward) and
``torch.ops.uepo.multiseed_sample`` and ``torch.ops.uepo.residual_head`` with CPU (and, when built,
CUDA) kernels, and ``torch.ops.uepo.acting_step`` (normalise + sampler + head in one call from Python,
composed of the others in C++). Every op here has a
reference written with plain PyTorch ops that computes the same function; the tests compare
the two on random inputs. When the compiled library is missing or cannot load, ``import uepo``
warns once with the reason and the fix, and the references serve instead.

``backend()`` names what runs: ``"cuda"``, ``"cpu"`` (compiled) or ``"reference"``. Set
``UEPO_BACKEND=reference`` (or call ``set_backend("reference")``) to force the references.
"""

from __future__ import annotations

import importlib.machinery
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

DIVERGENCE_EPS = 1e-4  # ε_c of the acceleration cosine term (SPEC §3)

_lib_error: str | None = None  # why the compiled library is not in use, if it is not
_lib_has_cuda = False
_forced_reference = os.environ.get("UEPO_BACKEND", "").strip().lower() == "reference"


def _library_path() -> Path | None:
    here = Path(__file__).parent
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = here / f"_C{suffix}"
        if candidate.exists():
            return candidate
    return None


def _load_library() -> None:
    """Load uepo._C once; on any failure remember why and fall back to the references."""
    global _lib_error, _lib_has_cuda
    fix = (
        "Rebuild it against the torch you run: `pip install --no-build-isolation "
        "--force-reinstall --no-deps .` from the uepo checkout (or `make install`)."
    )
    path = _library_path()
    if path is None:
        _lib_error = f"the compiled kernels (uepo/_C*.so) are not installed. {fix}"
        return
    try:
        torch.ops.load_library(str(path))
    except (OSError, RuntimeError) as exc:  # undefined symbols: built against another torch
        _lib_error = f"{path.name} failed to load ({exc}). {fix}"
        return
    info = dict(kv.split("=", 1) for kv in torch.ops.uepo.build_info().split(";"))
    built, running = info.get("torch", "?"), torch.__version__
    if built != running:
        _lib_error = (
            f"{path.name} was built against torch {built} but torch {running} is running "
            f"(pip's build isolation builds against a torch of its own). {fix}"
        )
        return
    _lib_has_cuda = info.get("cuda") == "1"


_load_library()
if _lib_error is not None and not _forced_reference:
    warnings.warn(f"uepo: using the pure-PyTorch reference ops: {_lib_error}", stacklevel=2)


def compiled_available() -> bool:
    """True when uepo._C loaded and matches the running torch."""
    return _lib_error is None


def compiled_with_cuda() -> bool:
    """True when uepo._C holds CUDA kernels (whether or not a GPU is present)."""
    return compiled_available() and _lib_has_cuda


def set_backend(name: str) -> None:
    """``"reference"`` forces the pure-PyTorch ops; ``"auto"`` uses the compiled ones if loaded."""
    global _forced_reference
    if name not in {"reference", "auto"}:
        raise ValueError(f"backend must be 'reference' or 'auto', got {name!r}")
    _forced_reference = name == "reference"


def backend(device: torch.device | str | None = None) -> str:
    """Which implementation runs for tensors on ``device`` (default: CUDA if available)."""
    if _forced_reference or not compiled_available():
        return "reference"
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda":
        return "cuda" if _lib_has_cuda else "reference"
    return "cpu"


def _use_compiled(t: Tensor) -> bool:
    return backend(t.device) != "reference"


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------


def reference_divergence(chunks: Tensor, mask: Tensor | None = None, eps: float = DIVERGENCE_EPS) -> Tensor:
    """Pairwise velocity/acceleration divergence (SPEC §3), (B, n, H, d_a) -> (B, n, n)."""
    _check_chunks(chunks, mask)
    vel = chunks[:, :, 1:] - chunks[:, :, :-1]  # (B, n, H-1, d_a)
    acc = chunks[:, :, 2:] - 2 * chunks[:, :, 1:-1] + chunks[:, :, :-2]  # (B, n, H-2, d_a)
    if mask is None:
        w_vel = chunks.new_ones(chunks.shape[0], vel.shape[2])
        w_acc = chunks.new_ones(chunks.shape[0], acc.shape[2])
    else:
        m = mask.to(chunks.dtype)
        w_vel = m[:, 1:] * m[:, :-1]
        w_acc = m[:, 2:] * m[:, 1:-1] * m[:, :-2]
    vel_dist = torch.linalg.vector_norm(vel[:, :, None] - vel[:, None, :], dim=-1)  # (B,n,n,H-1)
    acc_norm = torch.linalg.vector_norm(acc, dim=-1)  # (B, n, H-2)
    dot = torch.einsum("bitd,bjtd->bijt", acc, acc)
    cos_term = 1 - (dot + eps) / (acc_norm[:, :, None] * acc_norm[:, None, :] + eps)
    # div(a, a) is 0 exactly; computed, it is rounding noise, and so would be its gradient.
    n = chunks.shape[1]
    off_diagonal = 1 - torch.eye(n, dtype=chunks.dtype, device=chunks.device)
    return (_masked_mean(vel_dist, w_vel) + _masked_mean(cos_term, w_acc)) * off_diagonal


def _masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean over the last axis, weights (B, T); 0 where every weight is 0."""
    total = weights.sum(-1)[:, None, None]
    summed = (values * weights[:, None, None]).sum(-1)
    return torch.where(total > 0, summed / total.clamp_min(1e-30), torch.zeros_like(summed))


def _check_chunks(chunks: Tensor, mask: Tensor | None) -> None:
    if chunks.dim() != 4:
        raise ValueError(f"divergence: chunks must have shape (B, n, H, d_a), got {tuple(chunks.shape)}")
    if chunks.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"divergence: chunks must be float32 or float64, got {chunks.dtype}")
    if chunks.shape[2] < 3:
        raise ValueError(
            f"divergence needs chunks of H >= 3 steps (it uses accelerations), got H = {chunks.shape[2]}"
        )
    if mask is not None:
        if tuple(mask.shape) != (chunks.shape[0], chunks.shape[2]):
            raise ValueError(
                f"divergence: mask must have shape (B, H) = {(chunks.shape[0], chunks.shape[2])}, "
                f"got {tuple(mask.shape)}"
            )
        if mask.device != chunks.device:
            raise ValueError(f"divergence: mask is on {mask.device} but chunks on {chunks.device}")


def divergence(chunks: Tensor, mask: Tensor | None = None, eps: float = DIVERGENCE_EPS) -> Tensor:
    """Pairwise ``div`` of the n chunks of each state, (B, n, H, d_a) -> (B, n, n); autograd-ready.

    ``mask`` (B, H), bool or 0/1 floats, marks valid chunk steps (padding past an episode's end).
    """
    if chunks.dtype in (torch.bfloat16, torch.float16):  # from a network under autocast: the op is f32/f64
        chunks = chunks.float()
    _check_chunks(chunks, mask)
    if not _use_compiled(chunks):
        return reference_divergence(chunks, mask, eps)
    if mask is not None:
        mask = mask.to(chunks.dtype)
    return torch.ops.uepo.divergence(chunks, mask, float(eps))


# ---------------------------------------------------------------------------------------------
# Multi-seed sampler
# ---------------------------------------------------------------------------------------------

EpsFn = Callable[[Tensor, int, Tensor], Tensor]  # (x (N, H, d_a), timestep, cond (N, C)) -> ε̂


def perturbation_scale(d: Tensor, tau: float, eta: float) -> Tensor:
    """σ = η · max(0, τ − d) / τ, zero when τ ≤ 0 (SPEC §3)."""
    if tau <= 0:
        return torch.zeros_like(d)
    return eta * (tau - d).clamp_min(0) / tau


def nearest_competitor(div: Tensor) -> Tensor:
    """min_{j≠i} div[..., i, j] of a (B, n, n) matrix -> (B, n); +inf when n == 1."""
    eye = torch.eye(div.shape[-1], dtype=torch.bool, device=div.device)
    return div.masked_fill(eye, math.inf).amin(-1)


PREDICTIONS = ("eps", "x0", "v")  # what a denoiser outputs (``pretrain.prediction``)


def implied_eps(out: Tensor, x: Tensor, alpha_bar: float, prediction: str) -> Tensor:
    """The ε̂ that a denoiser's output implies at x_k: the output itself (eps), from x̂_0 (x0) or from
    v̂ = √ᾱ ε − √(1 − ᾱ) x_0 (v); the fused sampler converts in the same order of operations."""
    if prediction == "x0":
        return (x - math.sqrt(alpha_bar) * out) / math.sqrt(1 - alpha_bar)
    if prediction == "v":
        return math.sqrt(alpha_bar) * out + math.sqrt(1 - alpha_bar) * x
    if prediction != "eps":
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
    return out


def multiseed_ddim(
    eps_fn: EpsFn,
    cond: Tensor,
    noise: Tensor,
    perturb: Tensor,
    timesteps: Sequence[int],
    alpha_bars: Sequence[float],
    eta: float,
    tau: float,
    eps: float = DIVERGENCE_EPS,
    return_div: bool = False,
    divergence_fn: Callable[..., Tensor] = reference_divergence,
) -> tuple[Tensor, Tensor | None]:
    """The multi-seed DDIM chain with adaptive perturbation (SPEC §3) for any denoiser.

    All n chains of every state are denoised together. Differentiable when ``eps_fn`` and
    ``divergence_fn`` are (σ itself is treated as a constant, as in L_B).
    """
    B, n, H, D = cond.shape[0], noise.shape[-3], noise.shape[-2], noise.shape[-1]
    K = len(timesteps)
    x = noise.expand(B, n, H, D).reshape(B * n, H * D)
    z = perturb.expand(B, n, K, H, D)
    cond_rows = cond.repeat_interleave(n, dim=0)  # row b*n + i holds state b
    divs = []
    for s, t in enumerate(timesteps):
        ab, ab_prev = float(alpha_bars[s]), float(alpha_bars[s + 1])
        eps_hat = eps_fn(x.view(B * n, H, D), int(t), cond_rows).reshape(B * n, H * D)
        x0 = ((x - math.sqrt(1 - ab) * eps_hat) / math.sqrt(ab)).clamp(-1, 1)
        do_perturb = K - s > 2 and eta > 0 and tau > 0 and n > 1
        if return_div or do_perturb:
            d = nearest_competitor(divergence_fn(x0.view(B, n, H, D), None, eps))
            divs.append(d)
        if do_perturb:
            sigma = perturbation_scale(d.detach(), tau, eta)[..., None]  # (B, n, 1)
            x0 = (x0.view(B, n, H * D) + sigma * z[:, :, s].reshape(B, n, H * D)).clamp(-1, 1)
            x0 = x0.reshape(B * n, H * D)
        x = math.sqrt(ab_prev) * x0 + math.sqrt(1 - ab_prev) * eps_hat
    chunks = x.view(B, n, H, D)
    return chunks, (torch.stack(divs, -1) if return_div else None)


def reference_multiseed_sample(
    cond: Tensor,
    noise: Tensor,
    perturb: Tensor,
    weights: Sequence[Tensor],
    timesteps: Sequence[int],
    alpha_bars: Sequence[float],
    horizon: int,
    eta: float = 0.1,
    tau: float = 0.0,
    eps: float = DIVERGENCE_EPS,
    return_div: bool = False,
    prediction: str = "eps",
) -> tuple[Tensor, Tensor | None]:
    """The fused sampler's reference: the residual-MLP denoiser module in a Python loop."""
    from uepo.nets import residual_mlp_apply

    alpha_bar_at = dict(zip((int(t) for t in timesteps), (float(a) for a in alpha_bars), strict=False))

    def eps_fn(x: Tensor, t: int, c: Tensor) -> Tensor:
        steps = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        flat = x.reshape(x.shape[0], -1)
        return implied_eps(residual_mlp_apply(weights, flat, steps, c), flat, alpha_bar_at[t], prediction)

    with torch.no_grad():
        return multiseed_ddim(eps_fn, cond, noise, perturb, timesteps, alpha_bars, eta, tau, eps, return_div)


def multiseed_sample(
    cond: Tensor,
    noise: Tensor,
    perturb: Tensor,
    weights: Sequence[Tensor],
    timesteps: Sequence[int],
    alpha_bars: Sequence[float],
    horizon: int,
    eta: float = 0.1,
    tau: float = 0.0,
    eps: float = DIVERGENCE_EPS,
    return_div: bool = False,
    prediction: str = "eps",
) -> tuple[Tensor, Tensor | None]:
    """Whole DDIM chain of the residual-MLP denoiser for B states × n seeds in one call.

    Args:
        cond: (B, C) flattened, normalised state histories.
        noise: (n, H, d_a) initial noise per seed, or (B, n, H, d_a) per state and seed.
        perturb: (n, K_s, H, d_a) perturbation directions per seed and step, or (B, n, K_s, H, d_a).
        weights: ``ResidualMLPDenoiser.kernel_weights()``.
        timesteps: the K_s training timesteps visited, noisiest first.
        alpha_bars: ᾱ at each of those steps, then 1.0 (K_s + 1 values).
        horizon: H, the chunk length.
        eta, tau: perturbation strength η and threshold τ (τ ≤ 0 disables the perturbation).
        eps: ε_c of the divergence.
        return_div: also return the nearest-competitor divergences (B, n, K_s).
        prediction: what the network outputs, ``eps`` (ε̂), ``x0`` (x̂_0) or ``v`` (v̂); each step uses the ε̂ it
            implies (``implied_eps``).

    Returns:
        chunks (B, n, H, d_a), and the divergences or None. No autograd.
    """
    if not _use_compiled(cond):
        return reference_multiseed_sample(
            cond, noise, perturb, weights, timesteps, alpha_bars, horizon, eta, tau, eps, return_div, prediction
        )
    with torch.no_grad():
        chunks, divs = torch.ops.uepo.multiseed_sample(
            cond, noise, perturb, list(weights), [int(t) for t in timesteps],
            [float(a) for a in alpha_bars], int(horizon), float(eta), float(tau), float(eps),
            bool(return_div), prediction,
        )
    return chunks, (divs if return_div else None)


# ---------------------------------------------------------------------------------------------
# One acting step: normalise, sample, residual head, draw (phase E's per-env-step work)
# ---------------------------------------------------------------------------------------------


def reference_residual_head(obs_n: Tensor, base: Tensor, head: Sequence[Tensor], log_std_min: float,
                            log_std_max: float, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``residual_head``'s reference: the head's layers as ``nn.Linear`` / ReLU / tanh calls."""
    h = torch.cat([obs_n, base], dim=-1)
    trunk = len(head) - 4
    for w, b in zip(head[:trunk:2], head[1:trunk:2], strict=True):
        h = torch.nn.functional.linear(h, w, b).relu_()
    mean = base + torch.tanh(torch.nn.functional.linear(h, head[trunk], head[trunk + 1]))
    scale = torch.tanh(torch.nn.functional.linear(h, head[trunk + 2], head[trunk + 3])).add_(1).mul_(
        0.5 * (log_std_max - log_std_min)).add_(log_std_min).exp_()
    return z.mul(scale).add_(mean), mean, scale


def residual_head(obs_n: Tensor, base: Tensor, head: Sequence[Tensor], log_std_min: float, log_std_max: float,
                  z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The residual Gaussian head φ_i and its draw for B rows, no autograd.

    Args:
        obs_n: (B, d_s) normalised states; base: (B, d_a) the diffusion actions μ^i_1.
        head: (weight, bias) pairs in ``nn.Linear`` layout: the trunk's (each followed by ReLU; input
            [obs_n, base]), then the mean layer's and the log-std layer's.
        log_std_min, log_std_max: log_std = min + (max − min)(tanh(u) + 1)/2.
        z: (B, d_a) standard normal draws.

    Returns:
        action = mean + scale·z, mean = base + tanh(·), scale; each (B, d_a). On the CPU the compiled
        kernel runs each layer as an in-place matrix-vector product up to 16 rows (sums in another
        order than BLAS: equal to the reference within rounding).
    """
    if not _use_compiled(obs_n):
        return reference_residual_head(obs_n, base, head, log_std_min, log_std_max, z)
    return torch.ops.uepo.residual_head(obs_n, base, list(head), float(log_std_min), float(log_std_max), z)


def reference_acting_step(
    hist: Tensor, obs_mean: Tensor, obs_std: Tensor, noise: Tensor, perturb: Tensor, weights: Sequence[Tensor],
    timesteps: Sequence[int], alpha_bars: Sequence[float], horizon: int, eta: float, tau: float, eps: float,
    seed_index: int, head: Sequence[Tensor], log_std_min: float, log_std_max: float, z: Tensor,
    prediction: str = "eps",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``acting_step`` call by call: normalise, ``multiseed_sample``, ``residual_head`` (each the compiled op
    where it runs, so with the compiled backend this is the op's own sequence of calls)."""
    cond = (hist - obs_mean) / obs_std
    chunks, _ = multiseed_sample(cond.view(hist.shape[0], -1), noise, perturb, weights, timesteps, alpha_bars,
                                 horizon, eta, tau, eps, prediction=prediction)
    base = chunks[:, seed_index, 0]
    return (base, *residual_head(cond[:, -1], base, head, log_std_min, log_std_max, z))


def acting_step(
    hist: Tensor, obs_mean: Tensor, obs_std: Tensor, noise: Tensor, perturb: Tensor, weights: Sequence[Tensor],
    timesteps: Sequence[int], alpha_bars: Sequence[float], horizon: int, eta: float, tau: float, eps: float,
    seed_index: int, head: Sequence[Tensor], log_std_min: float, log_std_max: float, z: Tensor,
    prediction: str = "eps",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Sub-policy ``seed_index``'s acting step for B raw state histories, in one call.

    Args:
        hist: (B, T_o, d_s) raw state histories; obs_mean, obs_std: (d_s,) the frozen normaliser.
        noise … eps: ``multiseed_sample``'s seed bank, denoiser weights and solver (all n seeds are sampled:
            the perturbation couples them).
        head: the residual Gaussian head's (weight, bias) pairs in ``nn.Linear`` layout: the trunk's
            (each followed by ReLU; input [s_t normalised, μ^i_1]), then the mean layer's and the log-std
            layer's. log_std = log_std_min + (log_std_max − log_std_min)(tanh(u) + 1)/2.
        z: (B, d_a) standard normal draws.
        prediction: what the denoiser outputs (``multiseed_sample``).

    Returns:
        μ^i_1 (B, d_a), the action mean + scale·z, the mean μ^i_1 + tanh(·), the scale; no autograd
        through the sampler. The compiled op makes the same calls as the reference, from C++.
    """
    if not _use_compiled(hist):
        return reference_acting_step(hist, obs_mean, obs_std, noise, perturb, weights, timesteps, alpha_bars,
                                     horizon, eta, tau, eps, seed_index, head, log_std_min, log_std_max, z,
                                     prediction)
    return torch.ops.uepo.acting_step(
        hist, obs_mean, obs_std, noise, perturb, list(weights), [int(t) for t in timesteps],
        [float(a) for a in alpha_bars], int(horizon), float(eta), float(tau), float(eps), int(seed_index),
        list(head), float(log_std_min), float(log_std_max), z, prediction)


# ---------------------------------------------------------------------------------------------
# Registration: fake (meta) kernels for tracing, torch.compile and opcheck.
# ---------------------------------------------------------------------------------------------

if compiled_available():  # autograd of uepo::divergence is registered in C++ (csrc/autograd.cpp)

    @torch.library.register_fake("uepo::divergence")
    def _divergence_fake(chunks, mask, eps):
        return chunks.new_empty(chunks.shape[0], chunks.shape[1], chunks.shape[1])

    @torch.library.register_fake("uepo::divergence_backward")
    def _divergence_backward_fake(grad, chunks, mask, eps):
        return torch.empty_like(chunks)

    @torch.library.register_fake("uepo::residual_head")
    def _residual_head_fake(obs_n, base, head, log_std_min, log_std_max, z):
        return base.new_empty(base.shape), base.new_empty(base.shape), base.new_empty(base.shape)

    @torch.library.register_fake("uepo::multiseed_sample")
    def _multiseed_sample_fake(cond, noise, perturb, weights, timesteps, alpha_bars, horizon,
                               eta, tau, eps, return_div, prediction="eps"):
        B, n, H, D = cond.shape[0], noise.shape[-3], noise.shape[-2], noise.shape[-1]
        divs = cond.new_empty(B, n, len(timesteps)) if return_div else cond.new_empty(0)
        return cond.new_empty(B, n, H, D), divs
