"""The fused ops against their pure-PyTorch references, their properties, and their errors."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from uepo import ops
from uepo.diffusion import Schedule, SeedBank, multiseed_sample
from uepo.nets import ResidualMLPDenoiser, residual_mlp_apply

torch.set_num_threads(1)

compiled = pytest.mark.skipif(not ops.compiled_available(), reason=f"uepo._C not loaded: {ops._lib_error}")
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-12)}

# The grid: every combination for the (cheap) divergence.
DIV_GRID = list(itertools.product([1, 13, 256], [1, 2, 4, 7], [3, 8, 11], [1, 3, 7]))


def random_mask(B: int, H: int, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Valid prefixes of random length (>= 1), as padding past an episode's end produces."""
    lengths = torch.randint(1, H + 1, (B,), generator=g)
    return (torch.arange(H)[None] < lengths[:, None]).to(dtype)


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_divergence_forward_and_backward_match_reference_on_grid(dtype):
    g = torch.Generator().manual_seed(0)
    for B, n, H, D in DIV_GRID:
        chunks = torch.randn(B, n, H, D, generator=g, dtype=dtype)
        for mask in (None, random_mask(B, H, g, dtype)):
            x1 = chunks.clone().requires_grad_()
            x2 = chunks.clone().requires_grad_()
            fused, ref = ops.divergence(x1, mask), ops.reference_divergence(x2, mask)
            torch.testing.assert_close(fused, ref, **TOL[dtype], msg=f"forward {B, n, H, D}")
            upstream = torch.randn(B, n, n, generator=g, dtype=dtype)
            (fused * upstream).sum().backward()
            (ref * upstream).sum().backward()
            if dtype == torch.float64:
                torch.testing.assert_close(x1.grad, x2.grad, **TOL[dtype], msg=f"backward {B, n, H, D}")
                continue
            # In float32 the gradient is ill-conditioned where an acceleration is near zero
            # (|d cos / d c| ~ 1/|c|): hold the kernel to the reference's own float32 error.
            x3 = chunks.double().requires_grad_()
            m64 = None if mask is None else mask.double()
            (ops.reference_divergence(x3, m64) * upstream.double()).sum().backward()
            kernel_err = (x1.grad.double() - x3.grad).norm()
            reference_err = (x2.grad.double() - x3.grad).norm()
            assert kernel_err <= 3 * reference_err + 1e-5 * x3.grad.norm(), (B, n, H, D)


@compiled
@pytest.mark.parametrize("shape", [(1, 2, 3, 1), (3, 4, 8, 3), (2, 7, 11, 7), (13, 1, 5, 2)])
@pytest.mark.parametrize("with_mask", [False, True])
def test_divergence_gradcheck(shape, with_mask):
    g = torch.Generator().manual_seed(1)
    chunks = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    mask = random_mask(shape[0], shape[2], g, torch.float64) if with_mask else None
    assert torch.autograd.gradcheck(lambda c: ops.divergence(c, mask), (chunks,))


@compiled
def test_divergence_opcheck():
    g = torch.Generator().manual_seed(2)
    chunks = torch.randn(5, 3, 8, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mask = random_mask(5, 8, g, torch.float64)
    for m in (None, mask):
        torch.library.opcheck(torch.ops.uepo.divergence.default, (chunks, m, 1e-4))
    grad = torch.randn(5, 3, 3, generator=g, dtype=torch.float64)
    torch.library.opcheck(torch.ops.uepo.divergence_backward.default, (grad, chunks.detach(), mask, 1e-4))


@pytest.fixture(params=["fused", "reference"])
def div_impl(request):
    """(name, function) for the compiled divergence and its reference."""
    if request.param == "fused" and not ops.compiled_available():
        pytest.skip("uepo._C not loaded")
    return request.param, ops.divergence if request.param == "fused" else ops.reference_divergence


def test_divergence_properties(div_impl):
    impl, div = div_impl
    g = torch.Generator().manual_seed(3)
    chunks = torch.randn(6, 5, 8, 3, generator=g, dtype=torch.float64)
    d = div(chunks)
    exact = dict(rtol=0, atol=0) if impl == "fused" else dict(rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(d, d.transpose(1, 2), **exact)  # symmetric
    assert torch.all(d.diagonal(dim1=1, dim2=2) == 0)  # zero on identical chunks
    assert torch.all(d >= 0)
    off = d - torch.diag_embed(d.diagonal(dim1=1, dim2=2))
    assert torch.all(off + torch.eye(5, dtype=d.dtype) > 0)  # distinct chunks are apart
    offset = torch.randn(6, 1, 1, 3, generator=g, dtype=torch.float64)  # common to both chunks
    torch.testing.assert_close(div(chunks + offset), d, rtol=1e-9, atol=1e-12)
    # Constant chunks: zero accelerations must stay finite, in value and gradient.
    const = torch.randn(4, 3, 1, 2, generator=g, dtype=torch.float64).expand(4, 3, 6, 2).clone()
    const.requires_grad_()
    dc = div(const)
    dc.sum().backward()
    assert torch.isfinite(dc).all() and torch.isfinite(const.grad).all()
    torch.testing.assert_close(dc, torch.zeros_like(dc))


def test_divergence_ignores_masked_steps(div_impl):
    _, div = div_impl
    g = torch.Generator().manual_seed(4)
    chunks = torch.randn(3, 4, 8, 2, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 8, dtype=torch.float64)
    mask[:, 5:] = 0
    changed = chunks.clone()
    changed[:, :, 5:] += 10 * torch.randn(3, 4, 3, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(div(changed, mask), div(chunks, mask), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(div(chunks, mask), div(chunks[:, :, :5]), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(div(changed), div(chunks))  # without the mask the change shows
    bool_mask = div(chunks, mask.bool())
    torch.testing.assert_close(bool_mask, div(chunks, mask))


@compiled
def test_divergence_non_contiguous_input():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4, 8, 3, 5, generator=g, dtype=torch.float64)
    chunks = base.permute(0, 3, 1, 2)  # (4, 5, 8, 3), not contiguous
    assert not chunks.is_contiguous()
    torch.testing.assert_close(ops.divergence(chunks), ops.reference_divergence(chunks.contiguous()))


def test_divergence_errors():
    with pytest.raises(ValueError, match=r"\(B, n, H, d_a\)"):
        ops.divergence(torch.randn(3, 8, 2))
    with pytest.raises(ValueError, match="H >= 3"):
        ops.divergence(torch.randn(1, 2, 2, 3))
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.divergence(torch.ones(1, 2, 4, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="mask must have shape"):
        ops.divergence(torch.randn(2, 2, 4, 3), torch.ones(2, 5))
    with pytest.raises(ValueError, match="mask is on"):
        ops.divergence(torch.randn(2, 2, 4, 3), torch.ones(2, 4, device="meta"))


@compiled
def test_divergence_op_errors_from_cpp():
    with pytest.raises(RuntimeError, match="H >= 3"):
        torch.ops.uepo.divergence(torch.randn(1, 2, 2, 3), None, 1e-4)
    with pytest.raises(RuntimeError, match="grad must have shape"):
        torch.ops.uepo.divergence_backward(torch.randn(1, 3, 3), torch.randn(1, 2, 4, 3), None, 1e-4)


# ---------------------------------------------------------------------------------------------
# Multi-seed sampler
# ---------------------------------------------------------------------------------------------

# Every value of the grid appears, in odd combinations; B = 256 runs once per dtype.
SAMPLER_GRID = [
    (1, 1, 3, 1), (1, 4, 8, 3), (13, 2, 11, 7), (13, 7, 3, 3), (13, 4, 8, 1),
    (1, 7, 11, 3), (256, 4, 8, 3), (13, 1, 8, 7), (1, 2, 3, 7),
]


def make_problem(B, n, H, D, dtype, *, width=32, blocks=2, cond_dim=5, steps=10, seed=0):
    torch.manual_seed(seed)
    net = ResidualMLPDenoiser(H, D, cond_dim, width=width, num_blocks=blocks, time_dim=8).to(dtype)
    sched = Schedule(100).ddim(steps)
    bank = SeedBank.draw(n, steps, H, D, base_seed=100 + seed, dtype=dtype)
    cond = torch.randn(B, cond_dim, dtype=dtype)
    return net, sched, bank, cond


def sample_both(net, sched, bank, cond, eta, tau, **kw):
    args = (cond, bank.noise, bank.perturb, net.kernel_weights(), sched.timesteps, sched.alpha_bars,
            net.horizon, eta, tau)
    return ops.multiseed_sample(*args, return_div=True, **kw), ops.reference_multiseed_sample(
        *args, return_div=True, **kw)


def tau_between_divergences(net, sched, bank, cond, eta: float = 0.1, prediction: str = "eps") -> float:
    """A τ that both perturbation branches take and that no divergence of the perturbed run
    comes within rounding of (float32 kernels on another ISA must not flip a branch)."""
    w64 = [w.double() for w in net.kernel_weights()]
    args = (cond.double(), bank.noise.double(), bank.perturb.double(), w64, sched.timesteps, sched.alpha_bars,
            net.horizon)
    _, d0 = ops.reference_multiseed_sample(*args, eta=0.0, tau=0.0, return_div=True, prediction=prediction)
    values = torch.sort(d0[torch.isfinite(d0)].flatten()).values
    if values.numel() < 2:
        return 1.0
    candidates = ((values[1:] + values[:-1]) / 2)[(values[1:] - values[:-1]).argsort(descending=True)]
    for tau in candidates[:20].tolist():
        _, d = ops.reference_multiseed_sample(*args, eta=eta, tau=tau, return_div=True, prediction=prediction)
        if ((d - tau).abs() > 1e-3 * tau).all():
            return tau
    raise AssertionError("no τ keeps clear of every divergence")


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,H,D", SAMPLER_GRID)
def test_sampler_matches_reference(B, n, H, D, dtype):
    net, sched, bank, cond = make_problem(B, n, H, D, dtype)
    tau = tau_between_divergences(net, sched, bank, cond)
    (fused, fdiv), (ref, rdiv) = sample_both(net, sched, bank, cond, 0.1, tau)
    assert fused.shape == (B, n, H, D) and fdiv.shape == (B, n, len(sched.timesteps))
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-4)
    torch.testing.assert_close(fused, ref, **tol)
    torch.testing.assert_close(fdiv, rdiv, **tol)


@compiled
@pytest.mark.parametrize("prediction", ["x0", "v"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,H,D", [SAMPLER_GRID[i] for i in (1, 2, 3, 7)])
def test_sampler_matches_reference_for_x0_and_v_networks(B, n, H, D, dtype, prediction):
    """--pretrain.prediction x0 / v: the op turns the output into the ε̂ it implies, as the reference does."""
    net, sched, bank, cond = make_problem(B, n, H, D, dtype)
    tau = tau_between_divergences(net, sched, bank, cond, prediction=prediction)
    (fused, fdiv), (ref, rdiv) = sample_both(net, sched, bank, cond, 0.1, tau, prediction=prediction)
    (eps_net, _), _ = sample_both(net, sched, bank, cond, 0.1, tau)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-4)
    torch.testing.assert_close(fused, ref, **tol)
    torch.testing.assert_close(fdiv, rdiv, **tol)
    assert (fused - eps_net).abs().max() > 1e-2  # the argument is not ignored


@compiled
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_fused_sampler_runs_what_the_wrappers_trained(prediction):
    """A policy of each parametrisation samples through the op, and equals the PyTorch chain over the
    wrapper's own forward (the ε̂ that phase B's wrappers hand every solver)."""
    from uepo.diffusion import fused_denoiser, multiseed_sample
    from uepo.policy import build_backbone, policy_config

    torch.manual_seed(11)
    net = build_backbone(policy_config("diffusion", 5, 3, 2, 8, 4, width=32, num_blocks=2, time_dim=8,
                                       prediction=prediction)).double()
    assert fused_denoiser(net)[1] == prediction
    sched, bank = Schedule(100).ddim(10), SeedBank.draw(4, 10, 8, 3, 5, dtype=torch.float64)
    cond = torch.randn(7, 10, dtype=torch.float64)
    fused, _ = multiseed_sample(net, cond, sched, bank, eta=0.1, tau=0.5)

    def eps_fn(x, t, c):
        return net(x, torch.full((x.shape[0],), t, dtype=torch.long), c)

    chain, _ = ops.multiseed_ddim(eps_fn, cond, bank.noise, bank.perturb, sched.timesteps, sched.alpha_bars,
                                  0.1, 0.5)
    torch.testing.assert_close(fused, chain, rtol=1e-7, atol=1e-7)


@compiled
def test_sampler_refuses_an_unknown_prediction():
    net, sched, bank, cond = make_problem(2, 2, 4, 2, torch.float32)
    args = (cond, bank.noise, bank.perturb, net.kernel_weights(), list(sched.timesteps), list(sched.alpha_bars), 4,
            0.1, 0.0, 1e-4, False)
    with pytest.raises(RuntimeError, match="prediction must be 'eps', 'x0' or 'v'"):
        torch.ops.uepo.multiseed_sample(*args, "sample")
    with pytest.raises(ValueError, match="prediction must be one of"):
        ops.reference_multiseed_sample(*args, prediction="sample")


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
def test_sampler_default_network_matches_reference(dtype):
    """The benchmarked shape: hopper sizes, width 256 x 3 blocks, K_s = 10, n = 4."""
    torch.manual_seed(7)
    net = ResidualMLPDenoiser(8, 3, 22).to(dtype)
    sched, bank = Schedule(100).ddim(10), SeedBank.draw(4, 10, 8, 3, 0, dtype=dtype)
    cond = torch.randn(9, 22, dtype=dtype)
    (fused, fdiv), (ref, rdiv) = sample_both(net, sched, bank, cond, 0.1, 0.0)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-4)
    torch.testing.assert_close(fused, ref, **tol)
    torch.testing.assert_close(fdiv, rdiv, **tol)


@compiled
def test_sampler_per_state_noise_and_perturbation():
    net, sched, bank, cond = make_problem(5, 3, 8, 2, torch.float64)
    g = torch.Generator().manual_seed(9)
    noise = torch.randn(5, 3, 8, 2, generator=g, dtype=torch.float64)
    perturb = torch.randn(5, 3, 10, 8, 2, generator=g, dtype=torch.float64)
    args = (cond, noise, perturb, net.kernel_weights(), sched.timesteps, sched.alpha_bars, 8, 0.2, 50.0)
    fused, _ = ops.multiseed_sample(*args)
    ref, _ = ops.reference_multiseed_sample(*args)
    torch.testing.assert_close(fused, ref, **TOL[torch.float64])
    # Per-state noise equal across states reproduces the shared-noise call.
    shared = noise[:1].expand(5, 3, 8, 2)
    a, _ = ops.multiseed_sample(cond, shared, perturb[0], *args[3:])
    b, _ = ops.multiseed_sample(cond, noise[0], perturb[0], *args[3:])
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_sampler_deterministic_and_seed_dependent(impl):
    if impl == "fused" and not ops.compiled_available():
        pytest.skip("uepo._C not loaded")
    sample = ops.multiseed_sample if impl == "fused" else ops.reference_multiseed_sample
    net, sched, bank, cond = make_problem(6, 4, 8, 3, torch.float32)
    args = (net.kernel_weights(), sched.timesteps, sched.alpha_bars, 8, 0.1, 1.0)
    a, _ = sample(cond, bank.noise, bank.perturb, *args)
    b, _ = sample(cond.clone(), bank.noise.clone(), bank.perturb.clone(), *args)
    assert torch.equal(a, b)
    again = SeedBank.draw(4, 10, 8, 3, base_seed=bank.base_seed, dtype=torch.float32)
    assert torch.equal(again.noise, bank.noise) and torch.equal(again.perturb, bank.perturb)
    other = SeedBank.draw(4, 10, 8, 3, base_seed=bank.base_seed + 50, dtype=torch.float32)
    c, _ = sample(cond, other.noise, other.perturb, *args)
    assert (a - c).abs().amax(dim=(2, 3)).min() > 1e-3  # every sub-policy moves
    # Seeds are sub-policies: different seeds give different chunks for the same state.
    assert (a[:, 0] - a[:, 1]).abs().max() > 1e-3


@compiled
def test_sigma_is_zero_whenever_divergence_reaches_tau():
    """A seed whose nearest-competitor divergence stays >= τ at every perturbing step runs
    exactly the unperturbed chain; a seed that dips below τ does not."""
    net, sched, bank, cond = make_problem(8, 4, 8, 3, torch.float64, seed=3)
    args = (net.kernel_weights(), sched.timesteps, sched.alpha_bars, 8)
    plain, _ = ops.multiseed_sample(cond, bank.noise, bank.perturb, *args, eta=0.0, tau=0.0)
    K = len(sched.timesteps)
    (_, d0), _ = sample_both(net, sched, bank, cond, 0.0, 0.0)
    lowest = d0[:, :, : K - 2].amin(-1)  # perturbing steps are k > 2, i.e. s < K_s - 2
    tau = float(lowest.flatten().median())
    out, d = ops.multiseed_sample(cond, bank.noise, bank.perturb, *args, eta=0.3, tau=tau, return_div=True)
    never_below = (d[:, :, : K - 2] >= tau).all(-1)
    assert never_below.any() and (~never_below).any()
    same = (out == plain).all(-1).all(-1)
    assert torch.equal(same, never_below)
    # τ below every divergence: no seed is ever perturbed.
    tiny, _ = ops.multiseed_sample(cond, bank.noise, bank.perturb, *args, eta=0.3, tau=1e-9)
    assert torch.equal(tiny, plain)


def test_perturbation_scale_rule():
    d = torch.tensor([0.0, 0.5, 1.0, 2.0, math.inf])
    torch.testing.assert_close(ops.perturbation_scale(d, tau=1.0, eta=0.1), torch.tensor([0.1, 0.05, 0, 0, 0]))
    assert torch.equal(ops.perturbation_scale(d, tau=0.0, eta=0.1), torch.zeros(5))


@compiled
def test_single_seed_has_no_competitor():
    net, sched, bank, cond = make_problem(3, 1, 8, 2, torch.float64)
    (out, d), (ref, _) = sample_both(net, sched, bank, cond, 0.5, 10.0)
    assert torch.isinf(d).all()
    plain, _ = ops.multiseed_sample(cond, bank.noise, bank.perturb, net.kernel_weights(),
                                    sched.timesteps, sched.alpha_bars, 8, 0.0, 0.0)
    assert torch.equal(out, plain)
    torch.testing.assert_close(out, ref)


@compiled
def test_sampler_opcheck():
    net, sched, bank, cond = make_problem(3, 2, 4, 2, torch.float64)
    for return_div, prediction in ((False, "eps"), (True, "eps"), (True, "x0"), (False, "v")):
        args = (cond, bank.noise, bank.perturb, net.kernel_weights(), list(sched.timesteps),
                list(sched.alpha_bars), 4, 0.1, 1.0, 1e-4, return_div, prediction)
        torch.library.opcheck(torch.ops.uepo.multiseed_sample.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


# (B, n, T_o, d_s, d_a, trunk layers of the head): B = 1 is phase E's single env, 0 layers a linear head
ACTING_GRID = [(1, 4, 2, 11, 3, 2), (3, 2, 1, 5, 1, 1), (8, 7, 3, 17, 6, 2), (13, 1, 2, 4, 2, 0), (2, 3, 1, 3, 7, 3)]
LOG_STD = (-5.0, 0.0)


def make_acting_problem(B, n, T_o, d_s, d_a, layers, dtype, seed=0):
    """A sampler problem plus raw histories, a normaliser, a random residual head and draws z."""
    net, sched, bank, _ = make_problem(B, n, 8, d_a, dtype, cond_dim=T_o * d_s, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    hist = 3 * torch.randn(B, T_o, d_s, generator=g, dtype=dtype) + 1
    mean, std = torch.randn(d_s, generator=g, dtype=dtype), torch.rand(d_s, generator=g, dtype=dtype) + 0.5
    sizes = [d_s + d_a] + [16] * layers
    head = []
    for d_in, d_out in [*zip(sizes[:-1], sizes[1:], strict=True), (sizes[-1], d_a), (sizes[-1], d_a)]:
        head += [0.5 * torch.randn(d_out, d_in, generator=g, dtype=dtype), 0.1 * torch.randn(d_out, generator=g,
                                                                                            dtype=dtype)]
    z = torch.randn(B, d_a, generator=g, dtype=dtype)
    tau = tau_between_divergences(net, sched, bank, ((hist - mean) / std).view(B, -1))
    sampler = (bank.noise, bank.perturb, net.kernel_weights(), list(sched.timesteps), list(sched.alpha_bars), 8,
               0.1, tau, ops.DIVERGENCE_EPS)
    return (hist, mean, std, *sampler), head, z


def acting_args(problem, seed_index, head, z):
    return (*problem, seed_index, head, *LOG_STD, z)


@compiled
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,T_o,d_s,d_a,layers", ACTING_GRID)
def test_acting_step_matches_reference(B, n, T_o, d_s, d_a, layers, dtype):
    """The op against its reference with the pure-PyTorch sampler, every seed index."""
    problem, head, z = make_acting_problem(B, n, T_o, d_s, d_a, layers, dtype)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-4)
    for i in range(n):
        fused = ops.acting_step(*acting_args(problem, i, head, z))
        ops.set_backend("reference")
        try:
            ref = ops.acting_step(*acting_args(problem, i, head, z))
        finally:
            ops.set_backend("auto")
        assert [t.shape for t in fused] == [(B, d_a)] * 4
        for a, b in zip(fused, ref, strict=True):
            torch.testing.assert_close(a, b, **tol)
        torch.testing.assert_close(fused[1], fused[2] + z * fused[3], **tol)  # a = mean + scale·z
        assert fused[3].log().ge(LOG_STD[0] - 1e-6).all() and fused[3].log().le(LOG_STD[1] + 1e-6).all()


@compiled
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("B,n,T_o,d_s,d_a,layers", ACTING_GRID[:3])
def test_acting_step_is_the_reference_calls_made_from_cpp(B, n, T_o, d_s, d_a, layers, prediction):
    """With the compiled sampler in both, the op and ``reference_acting_step`` are the same calls: equal bits."""
    problem, head, z = make_acting_problem(B, n, T_o, d_s, d_a, layers, torch.float32, seed=4)
    fused = torch.ops.uepo.acting_step(*acting_args(problem, n - 1, head, z), prediction)
    ref = ops.reference_acting_step(*acting_args(problem, n - 1, head, z), prediction)
    assert all(torch.equal(a, b) for a, b in zip(fused, ref, strict=True))
    if prediction != "eps":  # and the pure-PyTorch sampler agrees
        ops.set_backend("reference")
        try:
            pure = ops.acting_step(*acting_args(problem, n - 1, head, z), prediction)
        finally:
            ops.set_backend("auto")
        for a, b in zip(fused, pure, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-4)


# (B, d_s, d_a, trunk layers, width): B ≤ 16 runs the CPU matvec kernel, B > 16 the ATen/BLAS path
HEAD_GRID = [(1, 11, 3, 2, 256), (1, 5, 1, 0, 8), (3, 17, 6, 1, 33), (16, 4, 2, 3, 16), (17, 11, 3, 2, 64),
             (40, 3, 7, 1, 5)]


def make_head_problem(B, d_s, d_a, layers, width, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [d_s + d_a] + [width] * layers
    head = []
    for d_in, d_out in [*zip(sizes[:-1], sizes[1:], strict=True), (sizes[-1], d_a), (sizes[-1], d_a)]:
        head += [torch.randn(d_out, d_in, generator=g, dtype=dtype) / math.sqrt(d_in),
                 0.1 * torch.randn(d_out, generator=g, dtype=dtype)]
    obs_n = torch.randn(B, d_s, generator=g, dtype=dtype)
    base = torch.rand(B, d_a, generator=g, dtype=dtype) * 2 - 1
    return obs_n, base, head, torch.randn(B, d_a, generator=g, dtype=dtype)


@compiled
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.compiled_with_cuda()), reason="needs a CUDA GPU and uepo's CUDA kernels"))])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,d_s,d_a,layers,width", HEAD_GRID)
def test_residual_head_matches_reference(B, d_s, d_a, layers, width, dtype, device):
    obs_n, base, head, z = make_head_problem(B, d_s, d_a, layers, width, dtype)
    wide = torch.randn(B, 2, d_s, dtype=dtype)
    ref = ops.reference_residual_head(obs_n, base, head, *LOG_STD, z)
    ref_strided = ops.reference_residual_head(wide[:, -1].contiguous(), base, head, *LOG_STD, z)
    head, base, z, obs_n, wide = [w.to(device) for w in head], base.to(device), z.to(device), obs_n.to(device), \
        wide.to(device)
    out = ops.residual_head(obs_n, base, head, *LOG_STD, z)
    strided = ops.residual_head(wide[:, -1], base, head, *LOG_STD, z)  # rows as acting_step passes them
    for a, b in zip([*out, *strided], [*ref, *ref_strided], strict=True):
        assert a.shape == (B, d_a) and a.dtype == dtype and a.device.type == device
        torch.testing.assert_close(a.cpu(), b, **TOL[dtype])
    if device == "cuda":
        torch.library.opcheck(torch.ops.uepo.residual_head.default, (obs_n, base, head, *LOG_STD, z),
                              test_utils=("test_schema", "test_faketensor"))


@compiled
def test_residual_head_opcheck_and_errors():
    obs_n, base, head, z = make_head_problem(3, 4, 2, 1, 8, torch.float64)
    torch.library.opcheck(torch.ops.uepo.residual_head.default, (obs_n, base, head, *LOG_STD, z),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    with pytest.raises(RuntimeError, match=r"layer 0 must be weight \(8, 5\).*got \[8, 6\]"):
        torch.ops.uepo.residual_head(obs_n[:, :3], base, head, *LOG_STD, z)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.uepo.residual_head(obs_n, base, [w.float() for w in head], *LOG_STD, z)
    with pytest.raises(RuntimeError, match=r"\(weight, bias\) pairs"):
        torch.ops.uepo.residual_head(obs_n, base, head[:-1], *LOG_STD, z)
    with pytest.raises(RuntimeError, match="z must be"):
        torch.ops.uepo.residual_head(obs_n, base, head, *LOG_STD, z[:1])


@compiled
def test_acting_step_opcheck_and_errors():
    problem, head, z = make_acting_problem(2, 3, 2, 4, 2, 1, torch.float64)
    torch.library.opcheck(torch.ops.uepo.acting_step.default, acting_args(problem, 1, head, z),
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))
    with pytest.raises(RuntimeError, match="seed_index 3 is not one of the 3 seeds"):
        torch.ops.uepo.acting_step(*acting_args(problem, 3, head, z))
    with pytest.raises(RuntimeError, match=r"\(weight, bias\) pairs"):
        torch.ops.uepo.acting_step(*acting_args(problem, 0, head[:-1], z))
    with pytest.raises(RuntimeError, match="z must be"):
        torch.ops.uepo.acting_step(*acting_args(problem, 0, head, z[:1]))


def test_denoiser_module_is_the_kernel_function():
    """forward() runs residual_mlp_apply on kernel_weights(), the function the kernel fuses;
    the generic solver path (any module) agrees with the fused path."""
    net, sched, bank, cond = make_problem(4, 3, 8, 2, torch.float64)
    x, t = torch.randn(4, 8, 2, dtype=torch.float64), torch.tensor([0, 5, 50, 99])
    functional = residual_mlp_apply(net.kernel_weights(), x.view(4, -1), t, cond).view(4, 8, 2)
    torch.testing.assert_close(net(x, t, cond), functional)

    class Wrapped(torch.nn.Module):  # not a ResidualMLPDenoiser: takes the generic PyTorch path
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, t, c):
            return self.inner(x, t, c)

    fused, _ = multiseed_sample(net, cond, sched, bank, eta=0.1, tau=5.0)
    generic, _ = multiseed_sample(Wrapped(net), cond, sched, bank, eta=0.1, tau=5.0)
    torch.testing.assert_close(fused, generic, **TOL[torch.float64])


def test_sampler_errors():
    net, sched, bank, cond = make_problem(2, 3, 8, 2, torch.float32)
    w = net.kernel_weights()
    good = dict(cond=cond, noise=bank.noise, perturb=bank.perturb, weights=w, timesteps=sched.timesteps,
                alpha_bars=sched.alpha_bars, horizon=8)
    sample = torch.ops.uepo.multiseed_sample if ops.compiled_available() else None
    if sample is None:
        pytest.skip("uepo._C not loaded")

    def call(**over):
        a = {**good, **over}
        return sample(a["cond"], a["noise"], a["perturb"], list(a["weights"]), list(a["timesteps"]),
                      list(a["alpha_bars"]), a["horizon"], 0.1, 1.0, 1e-4, False)

    cases = [
        (dict(weights=w[:-1]), "kernel_weights"),
        (dict(cond=torch.randn(2, 6)), r"cond must have shape \(B, 5\)"),
        (dict(noise=torch.randn(3, 7, 2)), "noise must have shape"),
        (dict(perturb=torch.randn(3, 9, 8, 2)), "perturb must have shape"),
        (dict(alpha_bars=sched.alpha_bars[:-1]), "K_s \\+ 1"),
        (dict(alpha_bars=(0.0,) + sched.alpha_bars[1:]), r"\(0, 1\]"),
        (dict(horizon=3), "does not divide"),
        (dict(cond=cond.double()), "dtype"),
        (dict(cond=cond.to(torch.int64)), "dtype"),
        (dict(timesteps=[]), "at least one sampling step"),
    ]
    for over, pattern in cases:
        with pytest.raises(RuntimeError, match=pattern):
            call(**over)
    with pytest.raises(ValueError, match="draw the bank"):
        multiseed_sample(net, cond, Schedule(100).ddim(5), bank)


# ---------------------------------------------------------------------------------------------
# Backend selection and the fallback
# ---------------------------------------------------------------------------------------------


def test_backend_switch():
    expected = "cpu" if ops.compiled_available() else "reference"
    assert ops.backend("cpu") == expected
    try:
        ops.set_backend("reference")
        assert ops.backend("cpu") == "reference"
        chunks = torch.randn(2, 3, 5, 2, dtype=torch.float64)
        torch.testing.assert_close(ops.divergence(chunks), ops.reference_divergence(chunks))
    finally:
        ops.set_backend("auto")
    with pytest.raises(ValueError):
        ops.set_backend("gpu")


def test_unloadable_library_warns_once_and_falls_back(tmp_path: Path):
    """A corrupt uepo/_C*.so (say, built against another torch) must not break `import uepo`."""
    pkg = Path(ops.__file__).parent
    copy = tmp_path / "uepo"
    shutil.copytree(pkg, copy, ignore=shutil.ignore_patterns("_C*", "__pycache__", "datasets"))
    import importlib.machinery

    (copy / f"_C{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"not a shared library")
    script = textwrap.dedent(
        """
        import warnings, torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import uepo
            import uepo.ops
        messages = [str(w.message) for w in caught if "uepo" in str(w.message)]
        assert len(messages) == 1, messages
        assert "failed to load" in messages[0] and "--no-build-isolation" in messages[0], messages[0]
        assert uepo.backend("cpu") == "reference"
        c = torch.randn(2, 3, 5, 2)
        assert torch.equal(uepo.ops.divergence(c), uepo.ops.reference_divergence(c))
        print("fallback ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "fallback ok" in out.stdout


# ---------------------------------------------------------------------------------------------
# CUDA (skipped without a GPU)
# ---------------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and ops.compiled_with_cuda()), reason="needs a CUDA GPU and uepo's CUDA kernels"
)


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_divergence_matches_reference(dtype):
    g = torch.Generator().manual_seed(11)
    for B, n, H, D in DIV_GRID[::5]:
        chunks = torch.randn(B, n, H, D, generator=g, dtype=dtype)
        mask = random_mask(B, H, g, dtype)
        x1 = chunks.cuda().requires_grad_()
        x2 = chunks.clone().requires_grad_()
        fused, ref = ops.divergence(x1, mask.cuda()), ops.reference_divergence(x2, mask)
        torch.testing.assert_close(fused.cpu(), ref, **TOL[dtype])
        up = torch.randn(B, n, n, generator=g, dtype=dtype)
        (fused * up.cuda()).sum().backward()
        (ref * up).sum().backward()
        torch.testing.assert_close(x1.grad.cpu(), x2.grad, **TOL[dtype])


@cuda
def test_cuda_divergence_gradcheck_and_opcheck():
    chunks = torch.randn(3, 4, 8, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: ops.divergence(c), (chunks,))
    torch.library.opcheck(torch.ops.uepo.divergence.default, (chunks, None, 1e-4))


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,n,H,D", SAMPLER_GRID)
def test_cuda_sampler_matches_reference(B, n, H, D, dtype):
    net, sched, bank, cond = make_problem(B, n, H, D, dtype)
    tau = tau_between_divergences(net, sched, bank, cond)
    ref, rdiv = ops.reference_multiseed_sample(cond, bank.noise, bank.perturb, net.kernel_weights(),
                                               sched.timesteps, sched.alpha_bars, H, 0.1, tau, return_div=True)
    net = net.cuda()
    out, div = ops.multiseed_sample(cond.cuda(), bank.noise.cuda(), bank.perturb.cuda(), net.kernel_weights(),
                                    sched.timesteps, sched.alpha_bars, H, 0.1, tau, return_div=True)
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-4)
    torch.testing.assert_close(out.cpu(), ref, **tol)
    torch.testing.assert_close(div.cpu(), rdiv, **tol)


@cuda
def test_cuda_sampler_opcheck():
    net, sched, bank, cond = make_problem(3, 2, 4, 2, torch.float64)
    net = net.cuda()
    args = (cond.cuda(), bank.noise.cuda(), bank.perturb.cuda(), net.kernel_weights(), list(sched.timesteps),
            list(sched.alpha_bars), 4, 0.1, 1.0, 1e-4, True)
    torch.library.opcheck(torch.ops.uepo.multiseed_sample.default, args,
                          test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic"))


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_acting_step_matches_reference(dtype):
    problem, head, z = make_acting_problem(8, 4, 2, 11, 3, 2, dtype)
    ref = ops.reference_acting_step(*acting_args(problem, 2, head, z))
    def gpu(t):
        return t.cuda() if isinstance(t, torch.Tensor) else [gpu(w) for w in t] if isinstance(t, list) else t

    on_gpu = [gpu(t) for t in problem]
    out = ops.acting_step(*acting_args(on_gpu, 2, [w.cuda() for w in head], z.cuda()))
    tol = TOL[dtype] if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-4)
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a.cpu(), b, **tol)


@cuda
def test_cuda_mismatched_devices_raise():
    net, sched, bank, cond = make_problem(2, 2, 4, 2, torch.float32)
    with pytest.raises(RuntimeError, match="device"):
        torch.ops.uepo.multiseed_sample(cond.cuda(), bank.noise, bank.perturb, net.kernel_weights(),
                                        list(sched.timesteps), list(sched.alpha_bars), 4, 0.1, 1.0, 1e-4, False)


@compiled
@pytest.mark.parametrize("gemm", ["tiles", "blas"])
def test_both_cpu_gemm_paths_match_the_reference(gemm):
    """The CPU sampler's GEMMs run in register tiles with AVX-512 and in the BLAS elsewhere (csrc/cpu/sampler.cpp);
    the path is fixed at load, so each is checked in a process of its own (UEPO_CPU_GEMM forces it)."""
    script = textwrap.dedent("""
        import sys, torch
        sys.path.insert(0, sys.argv[1])
        from test_ops import make_problem, sample_both, tau_between_divergences
        cases = [(13, 4, 8, 3, torch.float32), (1, 2, 11, 7, torch.float64), (40, 7, 3, 1, torch.float32)]
        for B, n, H, D, dtype in cases:
            net, sched, bank, cond = make_problem(B, n, H, D, dtype)
            tau = tau_between_divergences(net, sched, bank, cond)
            (fused, fdiv), (ref, rdiv) = sample_both(net, sched, bank, cond, 0.1, tau)
            tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-3, atol=2e-4)
            torch.testing.assert_close(fused, ref, **tol)
            torch.testing.assert_close(fdiv, rdiv, **tol)
        print("ok")
    """)
    env = dict(os.environ, UEPO_CPU_GEMM=gemm, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", script, str(Path(__file__).parent)], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
