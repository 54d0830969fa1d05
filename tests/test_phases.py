"""Phases A–D: the SPEC §5 checks (except the kernel ones, in tests/test_ops*.py) and the pieces.

A small pipeline runs once on the Hopper data shipped with uepo (real medium data, ~19k steps):
big enough that critics, dynamics and the diffusion policy learn something, small enough to
take well under a minute on one thread.
"""

from __future__ import annotations

import copy
import csv
import math

import numpy as np
import pytest
import torch

from uepo import ops
from uepo.config import ImproveConfig, apply_overrides, preset, validate
from uepo.data import load_offline_data
from uepo.diffusion import SeedBank
from uepo.nets import ResidualGaussianHead
from uepo.phases import BatchSampler, PhaseContext, sample_indices
from uepo.phases.critics import train_critics
from uepo.phases.dynamics import augmentation_warnings, ensemble_disagreement, termination_fn, train_dynamics
from uepo.phases.improve import Support, am_q, head_act_fn, improve, raw_act_fn
from uepo.phases.pretrain import calibrate_tau, finish_sub_policies, pretrain, sequence_kl
from uepo.policy import MultiSeedPolicy
from uepo.runs import NonFiniteLossError, Run, seed_everything
from uepo.seeds import screen_seed

torch.set_num_threads(1)

PIPELINE = {
    "critics": {"steps": 1500, "batch_size": 256, "hidden": 64, "layers": 2, "log_every": 500},
    "pretrain": {"steps": 2000, "batch_size": 128, "width": 64, "num_blocks": 2, "diffusion_steps": 20,
                 "sampling_steps": 5, "kl_batch": 16, "kl_chain_steps": 3, "tau_states": 512, "lr": 1e-3,
                 "warmup_steps": 20, "log_every": 100},
    "dynamics": {"ensemble": 4, "elites": 3, "hidden": 64, "layers": 2, "max_epochs": 12,
                 "max_updates_per_epoch": 40, "batch_size": 256, "augment_ratio": 0.5, "augment_batch": 256,
                 "patience": 4},
    "improve": {"steps": 60, "batch_size": 256, "std_warmup_steps": 100, "ope_every": 20, "ope_states": 48,
                "ope_horizon": 40, "eval_episodes": 0},
}


def small_config(seed: int = 0, **overrides):
    cfg = preset("smoke")
    cfg.seed = seed
    apply_overrides(cfg, copy.deepcopy(PIPELINE))
    apply_overrides(cfg, overrides)
    return cfg


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, shipped_hopper):
    """Phases A–D once; returns everything the checks need."""
    seed_everything(0)
    data = load_offline_data(shipped_hopper)
    cfg = small_config()
    ctx = PhaseContext(Run(tmp_path_factory.mktemp("run"), tensorboard=False), cfg, data, torch.device("cpu"),
                       progress=False)
    critics = train_critics(ctx)
    pre = pretrain(ctx)
    dynamics = train_dynamics(ctx, pre.policy)
    improved = improve(ctx, pre.policy, critics, dynamics)
    return dict(data=data, cfg=cfg, ctx=ctx, critics=critics, pre=pre, dynamics=dynamics, improved=improved)


# ---- SPEC §5 -------------------------------------------------------------------------------------


def test_sequence_kl_equals_a_monte_carlo_kl():
    """R_i (closed form) = min_j KL(N(μ^i, σ²) || N(μ^j, σ²)) over unmasked steps, per action dim."""
    g = torch.Generator().manual_seed(0)
    B, n, H, D, sigma = 3, 4, 6, 2, 0.1
    mu = 0.05 * torch.randn(B, n, H, D, generator=g, dtype=torch.float64)
    mask = torch.ones(B, H, dtype=torch.bool)
    mask[1, 4:] = False
    closed = sequence_kl(mu, mask, sigma)
    samples = 20000
    m = mask.double()[:, None, None, :, None]
    for b in range(B):
        for i in range(n):
            x = mu[b, i] + sigma * torch.randn(samples, H, D, generator=g, dtype=torch.float64)
            log_pi = -((x - mu[b, i]) ** 2 / (2 * sigma**2))
            mc = []
            for j in range(n):
                if j == i:
                    continue
                log_pj = -((x - mu[b, j]) ** 2 / (2 * sigma**2))
                per = ((log_pi - log_pj) * m[b, 0, 0]).sum((-1, -2)) / (mask[b].sum() * D)
                mc.append((per.mean().item(), per.std().item() / math.sqrt(samples)))
            est, se = min(mc)
            assert abs(closed[b, i].item() - est) < 4 * se + 1e-9, (b, i, closed[b, i].item(), est, se)


def test_refit_dynamics_holdout_error_not_worse_than_t0_by_5_percent(pipeline):
    m = pipeline["dynamics"].metrics
    assert m["augmented"] > 0 and 0 < m["keep_rate"] <= 1
    assert m["T_holdout_error"] <= 1.05 * m["T0_holdout_error"], m
    assert augmentation_warnings(m) == []


def test_augmentation_warning_names_the_gap_and_the_fix():
    assert augmentation_warnings({"T0_holdout_error": 0.2, "T_holdout_error": 0.209}) == []
    assert augmentation_warnings({"T0_holdout_error": 0.2}) == []  # --no-augmentation: no T̂ to compare
    (message,) = augmentation_warnings({"T0_holdout_error": 0.2, "T_holdout_error": 0.22})
    assert "10 % worse" in message and "--dynamics.max_updates_per_epoch" in message and "--no-augmentation" in message


def test_amq_ranks_the_bc_policy_above_random_actions(pipeline, tmp_path):
    """A behaviour-cloned policy (the Gaussian BC of ``--policy gaussian-ensemble``, one member)."""
    data = pipeline["data"]
    cfg = small_config(policy="gaussian-ensemble", pretrain={"num_seeds": 1, "steps": 1500})
    seed_everything(0)
    bc_policy = pretrain(PhaseContext(Run(tmp_path, tensorboard=False), cfg, data, torch.device("cpu"),
                                      False)).policy
    starts = data.histories(torch.arange(0, data.size, data.size // 64)[:64], bc_policy.history)
    gen = torch.Generator().manual_seed(1)

    def random_actions(hist):
        return torch.rand(hist.shape[0], data.action_dim, generator=gen) * 2 - 1

    support = Support.of(data, pipeline["dynamics"], pipeline["critics"], 0.99, 0.1, ImproveConfig().ope_support_factor)
    args = (pipeline["dynamics"], pipeline["critics"], starts, 40, data.normalize, support)
    bc = am_q(raw_act_fn(bc_policy, 0), *args)
    rnd = am_q(random_actions, *args)
    assert bc.plausible and rnd.plausible
    assert bc.value > 1.05 * rnd.value, (bc, rnd)


def test_improvement_accepts_only_better_plausible_amq_and_selects_its_argmax(pipeline):
    imp, data = pipeline["improved"], pipeline["data"]
    assert imp.selection["method"] == "amq" and all(imp.selection["amq_plausible"])
    # the diffusion default selects on fresh start states (validate_states -1: 1024, at most the data's size);
    # the gate's own Ĵ, kept beside them, is where a head was accepted only when higher
    assert imp.selection["validation"]["states"] == min(1024, data.size)
    gate = imp.selection["validation"]["gate"]["amq"]
    assert all(b >= r for b, r in zip(gate, imp.amq_raw, strict=True))  # accepted only when higher
    assert imp.selected == int(np.argmax(imp.amq_best))  # the fresh Ĵ's arg max
    # the returned heads are the accepted ones: re-scoring the selected policy reproduces its Ĵ
    cfg = pipeline["cfg"]
    ope_idx = pipeline["ctx"].run.load_checkpoint("improve_cache")["ope_idx"]
    starts = data.histories(ope_idx, imp.policy.history)
    support = Support.of(data, pipeline["dynamics"], pipeline["critics"], cfg.critics.gamma,
                         cfg.improve.ope_state_margin, cfg.improve.ope_support_factor)
    j = am_q(head_act_fn(imp.policy, imp.policy.heads[imp.selected], imp.selected), pipeline["dynamics"],
             pipeline["critics"], starts, cfg.improve.ope_horizon, data.normalize, support)
    assert j.value == pytest.approx(gate[imp.selected], rel=1e-5)


# ---- the pieces ----------------------------------------------------------------------------------


def test_critics_learn_values_of_the_data(pipeline):
    data, critics = pipeline["data"], pipeline["critics"]
    s = data.normalize(data.obs[:2000])
    with torch.no_grad():
        v = critics.v(s)
        q = critics.q_value(s, data.actions[:2000])
    # Hopper's rewards are ~1-3 per step: values of the data must be positive and of that order
    assert v.mean() > 1 and q.mean() > 1
    # V is an upper expectile of Q over the behaviour actions (expectile 0.7 ≥ the mean)
    assert (v - q).mean() > -0.5


def test_tau_is_the_quantile_of_the_nearest_competitor_divergence(pipeline):
    data, policy = pipeline["data"], pipeline["pre"].policy
    cond = data.cond(torch.arange(0, data.size, 37), policy.history)
    tau, _ = calibrate_tau(policy, cond, 0.25)
    policy.tau, saved = 0.0, policy.tau
    d = ops.nearest_competitor(ops.divergence(policy.base_chunks_from_cond(cond).double()))
    policy.tau = saved
    assert float((d < tau).double().mean()) == pytest.approx(0.25, abs=0.01)
    assert pipeline["pre"].metrics["tau"] > 0 and pipeline["pre"].policy.tau == pipeline["pre"].metrics["tau"]


def test_sub_policies_are_deterministic_and_differ_by_seed(pipeline):
    data, policy = pipeline["data"], pipeline["pre"].policy
    hist = data.histories(torch.arange(10), policy.history)
    a, b = policy.base_chunks(hist), policy.base_chunks(hist)
    assert torch.equal(a, b)
    assert not torch.allclose(a[:, 0], a[:, 1])
    # one seed asked for = that seed of the joint sample (the perturbation couples the chains)
    assert torch.equal(policy.base_chunks(hist, [2]), a[:, [2]])


def test_diffusion_policy_imitates_the_data(pipeline):
    """μ^i_1 is closer to the dataset action than a random action is (BC works)."""
    data, policy = pipeline["data"], pipeline["pre"].policy
    idx = torch.arange(0, data.size, 50)
    mu = policy.base_chunks(data.histories(idx, policy.history))[:, :, 0]
    err = ((mu - data.actions[idx][:, None]) ** 2).mean()
    rnd = ((torch.rand_like(mu) * 2 - 1 - data.actions[idx][:, None]) ** 2).mean()
    assert err < 0.5 * rnd


def test_heads_start_at_the_diffusion_action_and_keep_std_in_range():
    head = ResidualGaussianHead(5, 2, hidden=16)
    obs, base = torch.randn(7, 5), torch.rand(7, 2) * 2 - 1
    mean, log_std = head(obs, base)
    assert torch.equal(mean, base)
    assert (log_std >= -5).all() and (log_std <= 0).all()


def test_improved_heads_trained_and_std_warm_started(pipeline):
    imp, pre = pipeline["improved"], pipeline["pre"]
    data = pipeline["data"]
    hist = data.histories(torch.arange(0, 500, 5), pre.policy.history)
    s = pre.policy.normalize(hist[:, -1])
    base = pre.policy.base_chunks(hist)[:, 0, 0]
    _, log_std_init = pre.policy.heads[0](s, base)
    _, log_std = imp.policy.heads[0](s, base)
    assert not torch.allclose(log_std, log_std_init)  # the warm start moved the std
    frozen, trained = imp.policy.denoiser.state_dict(), pre.policy.denoiser.state_dict()  # phase D leaves it
    assert frozen.keys() == trained.keys() and all(torch.equal(frozen[k], trained[k]) for k in frozen)
    assert imp.selection["accept_z"] == 1.645  # the default (-1) resolved for diffusion, as BPPO's gate used it


def test_seq_kl_gradient_reaches_the_denoiser(pipeline):
    """L_B's KL term is differentiable through the short chain; past the cap κ it exerts no force."""
    data, policy = pipeline["data"], pipeline["pre"].policy
    net = copy.deepcopy(policy.denoiser).requires_grad_(True)
    steps = pipeline["pre"].policy.steps
    cond = data.cond(torch.arange(8), policy.history)

    def eps_fn(x, t, c):
        return net(x, torch.full((x.shape[0],), t, dtype=torch.long), c)

    mus, _ = ops.multiseed_ddim(eps_fn, cond, policy.seeds.noise, policy.seeds.perturb, steps.timesteps,
                                steps.alpha_bars, policy.eta, policy.tau, divergence_fn=ops.divergence)
    r = sequence_kl(mus, None, 0.1)
    r.mean().backward(retain_graph=True)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    net.zero_grad()
    r.clamp(max=float(r.min()) * 0.5).mean().backward()  # every R_i above κ: saturated
    assert all(float(p.grad.abs().sum()) == 0 for p in net.parameters() if p.grad is not None)


def test_termination_functions():
    healthy = torch.zeros(1, 11)
    healthy[0, 0] = 1.25
    fallen = healthy.clone()
    fallen[0, 0] = 0.5
    tilted = healthy.clone()
    tilted[0, 1] = 0.5
    hop = termination_fn("hopper")
    a = torch.zeros(1, 3)
    assert not hop(healthy, a, healthy).item()
    assert hop(healthy, a, fallen).item() and hop(healthy, a, tilted).item()
    walker = termination_fn("walker2d")
    w = torch.zeros(2, 17)
    w[:, 0] = torch.tensor([1.2, 2.5])
    assert walker(w, a, w).tolist() == [False, True]
    cheetah = termination_fn("halfcheetah")
    assert not cheetah(w, a, w).any() and not termination_fn("pen")(w, a, w).any()
    with pytest.raises(ValueError, match="termination function"):
        termination_fn("ant")


def test_disagreement_is_zero_for_identical_members(pipeline):
    model = copy.deepcopy(pipeline["dynamics"].model)
    with torch.no_grad():
        for layer in [*model.layers, model.head]:
            layer.weight[:] = layer.weight[0:1]
            layer.bias[:] = layer.bias[0:1]
    data = pipeline["data"]
    d = ensemble_disagreement(model, data.obs[:50], data.actions[:50])
    assert d.abs().max() < 1e-4
    assert ensemble_disagreement(pipeline["dynamics"].model, data.obs[:50], data.actions[:50]).mean() > 1e-4


def test_critics_are_deterministic_and_resume_exactly(tmp_path, tiny_hopper):
    data = load_offline_data(tiny_hopper)
    cfg = small_config(critics={"steps": 40, "checkpoint_every": 20, "log_every": 10, "hidden": 32})

    def run_in(path, steps):
        seed_everything(0)
        cfg.critics.steps = steps
        ctx = PhaseContext(Run(path, resume=True, tensorboard=False), cfg, data, torch.device("cpu"), False)
        return train_critics(ctx)

    full = run_in(tmp_path / "a", 40)
    again = run_in(tmp_path / "b", 40)
    for p, q in zip(full.v.parameters(), again.v.parameters(), strict=True):
        assert torch.equal(p, q)
    # interrupted after the checkpoint at step 20: keep only the progress checkpoint and go on
    run_in(tmp_path / "c", 40)
    (tmp_path / "c" / "checkpoints" / "critics.pt").unlink()
    state = torch.load(tmp_path / "c" / "checkpoints" / "critics_progress.pt", weights_only=False)
    assert state["step"] == 20
    resumed = run_in(tmp_path / "c", 40)
    for p, q in zip(full.q.parameters(), resumed.q.parameters(), strict=True):
        assert torch.equal(p, q)


def test_nan_loss_stops_with_phase_and_step(tmp_path, tiny_hopper):
    data = load_offline_data(tiny_hopper)
    data.rewards = data.rewards.clone()
    data.rewards[:] = float("nan")
    cfg = small_config(critics={"steps": 10, "hidden": 16})
    ctx = PhaseContext(Run(tmp_path, tensorboard=False), cfg, data, torch.device("cpu"), False)
    with pytest.raises(NonFiniteLossError, match=r"phase 'critics', step 0"):
        train_critics(ctx)


def test_policy_roundtrip(tmp_path, pipeline):
    policy = pipeline["improved"].policy
    policy.save(tmp_path / "p.pt")
    loaded = MultiSeedPolicy.load(tmp_path / "p.pt")
    hist = pipeline["data"].histories(torch.arange(5), policy.history)
    assert loaded.tau == policy.tau
    assert torch.equal(loaded.act(hist, 1), policy.act(hist, 1))


class Interrupted(Exception):
    pass


class InterruptingRun(Run):
    """A Run that dies right after the n-th save of one checkpoint (as a kill would)."""

    def __init__(self, root, name: str, after: int):
        super().__init__(root, resume=True, tensorboard=False)
        self.name, self.after, self.saves = name, after, 0

    def save_checkpoint(self, name, state):
        path = super().save_checkpoint(name, state)
        if name == self.name:
            self.saves += 1
            if self.saves == self.after:
                raise Interrupted(name)
        return path


@pytest.mark.parametrize("progress", ["critics_progress", "pretrain_progress", "dynamics_T0_progress",
                                      "dynamics_T_progress", "improve_progress"])
def test_phases_resume_from_their_progress_checkpoints(tmp_path, tiny_hopper, progress):
    """Killed right after a progress checkpoint, the pipeline continues to the uninterrupted result."""
    data = load_offline_data(tiny_hopper)
    cfg = small_config(critics={"steps": 20, "hidden": 16, "checkpoint_every": 5},
                       pretrain={"steps": 30, "width": 16, "num_blocks": 1, "checkpoint_every": 10,
                                 "tau_states": 32},
                       dynamics={"max_epochs": 4, "max_updates_per_epoch": 3, "checkpoint_every": 1,
                                 "hidden": 16, "patience": 10, "augment_batch": 32, "augment_ratio": 0.3},
                       improve={"steps": 20, "ope_every": 5, "ope_states": 8, "ope_horizon": 5,
                                "std_warmup_steps": 5})

    def run_all(run):
        ctx = PhaseContext(run, cfg, data, torch.device("cpu"), False)
        critics = train_critics(ctx)
        pre = pretrain(ctx)
        dyn = train_dynamics(ctx, pre.policy)
        return improve(ctx, pre.policy, critics, dyn)

    full = run_all(Run(tmp_path / "full", tensorboard=False))
    with pytest.raises(Interrupted):
        run_all(InterruptingRun(tmp_path / "cut", progress, after=2))
    torch.manual_seed(999)  # a fresh process would not share the global RNG state either
    resumed = run_all(Run(tmp_path / "cut", resume=True, tensorboard=False))
    assert resumed.selected == full.selected and resumed.amq_best == full.amq_best
    for k, v in full.policy.state_dict().items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k

    def metric_rows(path):  # (phase, step, key, value), without the wall-clock time
        return [tuple(r[1:]) for r in csv.reader(open(path / "metrics.csv"))]

    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "full")  # no duplicated steps


class ExactDenoiser(torch.nn.Module):
    """The ideal ε̂ for data that is one fixed chunk a*: (x − √ᾱ_t a*)/√(1 − ᾱ_t)."""

    def __init__(self, target, alpha_bars):
        super().__init__()
        self.target, self.alpha_bars = target, alpha_bars

    def forward(self, x, t, cond):
        ab = self.alpha_bars[t].to(x.dtype).view(-1, 1, 1)
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt()


@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_ddpm_and_ddim_recover_a_point_mass(tau):
    from uepo.diffusion import Schedule, SeedBank, ddpm_step_noise, multiseed_ddpm, multiseed_sample

    schedule = Schedule(30)
    target = torch.linspace(-0.8, 0.8, 12, dtype=torch.float64).view(4, 3)
    net = ExactDenoiser(target, schedule.alpha_bars)
    cond = torch.zeros(2, 5, dtype=torch.float64)
    bank = SeedBank.draw(3, 30, 4, 3, base_seed=11, dtype=torch.float64)
    chunks = multiseed_ddpm(net, cond, schedule, bank, ddpm_step_noise(3, 30, 4, 3, 11, torch.float64), 0.1, tau)
    assert torch.allclose(chunks, target.expand_as(chunks), atol=1e-9)
    steps = schedule.ddim(6)
    chunks, _ = multiseed_sample(net, cond, steps, SeedBank.draw(3, 6, 4, 3, 11, torch.float64), 0.1, tau)
    assert torch.allclose(chunks, target.expand_as(chunks), atol=1e-9)


def test_ddpm_policy_is_deterministic_per_seed():
    from uepo.policy import policy_config

    torch.manual_seed(0)
    cfg = policy_config("diffusion", 4, 2, 2, 4, 3, width=16, num_blocks=1, diffusion_steps=12, sampler="ddpm",
                        tau=0.3)
    policy = MultiSeedPolicy(cfg, torch.zeros(4), torch.ones(4))
    hist = torch.randn(5, 2, 4)
    a, b = policy.base_chunks(hist), policy.base_chunks(hist)
    assert a.shape == (5, 3, 4, 2) and torch.equal(a, b)
    assert not torch.allclose(a[:, 0], a[:, 1])
    loaded = MultiSeedPolicy.from_state(policy.state())
    assert torch.equal(loaded.base_chunks(hist), a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_x0_prediction_denoiser_implies_the_eps_that_recovers_its_x0(dtype):
    """--prediction x0: the ε̂ it hands the solvers gives back x̂_0 through x_0 = (x_k − √(1−ᾱ) ε̂) / √ᾱ."""
    from uepo.diffusion import Schedule, X0PredictionDenoiser
    from uepo.nets import ResidualMLPDenoiser

    torch.manual_seed(3)
    net = X0PredictionDenoiser(ResidualMLPDenoiser(5, 3, 7, width=16, num_blocks=1), 20).to(dtype)
    x, cond = torch.randn(9, 5, 3, dtype=dtype), torch.randn(9, 7, dtype=dtype)
    k = torch.tensor([0, 1, 2, 5, 9, 10, 15, 18, 19])
    ab = Schedule(20).alpha_bars[k].to(dtype).view(-1, 1, 1)
    x0 = (x - (1 - ab).sqrt() * net(x, k, cond)) / ab.sqrt()
    tol = dict(rtol=1e-4, atol=1e-3) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x0[k < 19], net.predict_x0(x, k, cond)[k < 19], **tol)  # √ᾱ_19 ≈ 1e-3 amplifies


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_v_prediction_denoiser_is_consistent_with_the_forward_process(dtype):
    """--prediction v: with the exact v of a forward-process draw, ε̂ and x̂_0 are the draw's ε and x_0."""
    from uepo.diffusion import Schedule, VPredictionDenoiser
    from uepo.nets import ResidualMLPDenoiser

    torch.manual_seed(4)
    schedule = Schedule(20)
    x0, eps, cond = torch.randn(9, 5, 3, dtype=dtype), torch.randn(9, 5, 3, dtype=dtype), torch.randn(9, 7, dtype=dtype)
    k = torch.tensor([0, 1, 2, 5, 9, 10, 15, 18, 19])
    ab = schedule.alpha_bars[k].to(dtype).view(-1, 1, 1)
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    net = VPredictionDenoiser(ResidualMLPDenoiser(5, 3, 7, width=16, num_blocks=1), 20).to(dtype)
    net.predict_v = lambda x, k, c: v  # the exact v: an oracle network
    x_k = schedule.add_noise(x0, eps, k)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(net(x_k, k, cond), eps, **tol)
    torch.testing.assert_close(net.predict_x0(x_k, k, cond), x0, **tol)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_training_target_is_what_the_solvers_invert(prediction):
    """The loss target of each parametrisation (``training_pair``) is the output whose implied ε̂ is the
    forward draw's ε: a network that predicts the target exactly is exact for the solvers too."""
    from uepo.diffusion import Schedule, training_pair
    from uepo.policy import build_backbone, policy_config

    torch.manual_seed(5)
    schedule = Schedule(20)
    x0, eps, cond = torch.randn(9, 5, 3, dtype=torch.float64), torch.randn(9, 5, 3, dtype=torch.float64), \
        torch.randn(9, 14, dtype=torch.float64)
    k = torch.tensor([0, 1, 2, 5, 9, 10, 15, 18, 19])
    ab = schedule.alpha_bars[k].view(-1, 1, 1)
    exact = {"eps": eps, "x0": x0, "v": ab.sqrt() * eps - (1 - ab).sqrt() * x0}[prediction]
    net = build_backbone(policy_config("diffusion", 7, 3, 2, 5, 2, width=16, num_blocks=1, diffusion_steps=20,
                                       prediction=prediction)).double()
    inner = net if prediction == "eps" else net.net
    inner.forward = lambda x, t, c: exact  # an oracle network in this parametrisation
    x_k = schedule.add_noise(x0, eps, k)
    predicted, target = training_pair(net, x_k, k, cond, x0, eps)
    torch.testing.assert_close(predicted, target, rtol=0, atol=0)
    torch.testing.assert_close(net(x_k, k, cond), eps, rtol=1e-9, atol=1e-9)  # the solvers' ε̂


def test_x0_policy_samples_through_the_fused_op_and_round_trips():
    from uepo import ops
    from uepo.diffusion import X0PredictionDenoiser
    from uepo.policy import policy_config

    torch.manual_seed(0)
    cfg = policy_config("diffusion", 4, 2, 2, 4, 3, width=16, num_blocks=1, diffusion_steps=12, tau=0.3,
                        seed_temperature=0.1, prediction="x0")
    policy = MultiSeedPolicy(cfg, torch.zeros(4), torch.ones(4))
    assert isinstance(policy.denoiser, X0PredictionDenoiser) and policy.prediction == "x0"
    assert (policy.sampler_op_args() is not None) == ops.compiled_available()
    hist = torch.randn(5, 2, 4)
    chunks = policy.base_chunks(hist)
    assert chunks.shape == (5, 3, 4, 2) and torch.isfinite(chunks).all()
    torch.testing.assert_close(policy.base_sampler(1)(policy.cond(hist)), chunks[:, 1, 0])  # acting's path
    torch.testing.assert_close(MultiSeedPolicy.from_state(policy.state()).base_chunks(hist), chunks)
    legacy = {k: v for k, v in cfg.items() if k != "prediction"}  # checkpoints from before the field: ε
    assert not isinstance(MultiSeedPolicy(dict(legacy), torch.zeros(4), torch.ones(4)).denoiser,
                          X0PredictionDenoiser)
    with pytest.raises(ValueError, match="prediction"):
        MultiSeedPolicy(dict(cfg, prediction="sample"), torch.zeros(4), torch.ones(4))


def test_imitation_probe_conditional_mean_averages_unperturbed_prior_draws():
    """scripts/imitation_probe.py's ConditionalMean: the mean first action of M full-prior chains, η = 0,
    whatever the policy's own seed temperature and τ."""
    import importlib.util
    import os

    from uepo.policy import policy_config

    spec = importlib.util.spec_from_file_location(
        "imitation_probe", os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "imitation_probe.py"))
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    torch.manual_seed(0)
    cfg = policy_config("diffusion", 4, 2, 2, 4, 3, width=16, num_blocks=1, diffusion_steps=12, tau=0.3,
                        seed_temperature=0.1)
    policy = MultiSeedPolicy(cfg, torch.zeros(4), torch.ones(4))
    hist = torch.randn(5, 2, 4)
    mean = probe.ConditionalMean(policy, 6).base_action(hist)
    chains = MultiSeedPolicy(dict(cfg, num_seeds=6, seed_temperature=1.0, eta=0.0), torch.zeros(4), torch.ones(4),
                             backbone=policy.denoiser)
    assert mean.shape == (5, 2)
    torch.testing.assert_close(mean, chains.base_chunks(hist)[:, :, 0].mean(1))
    other = MultiSeedPolicy(dict(cfg, seed_temperature=0.5, tau=0.05), torch.zeros(4), torch.ones(4),
                            backbone=policy.denoiser)
    torch.testing.assert_close(probe.ConditionalMean(other, 6).base_action(hist), mean)
    assert not torch.allclose(mean, policy.base_action(hist, 0))


def test_data_form_of_the_sequence_kl():
    """The literal form: min_j log p_i(A)/p_j(A) at the data chunk; it prefers the seed nearest the data."""
    g = torch.Generator().manual_seed(2)
    mu = torch.randn(2, 3, 4, 2, generator=g, dtype=torch.float64)
    data = torch.randn(2, 4, 2, generator=g, dtype=torch.float64)
    r = sequence_kl(mu, None, 0.5, data)
    sq = ((mu - data[:, None]) ** 2).sum((-1, -2))
    for b in range(2):
        for i in range(3):
            expected = min((sq[b, j] - sq[b, i]) / (2 * 0.25 * 8) for j in range(3) if j != i)
            assert r[b, i].item() == pytest.approx(expected.item())
    nearest = sq.argmin(1)
    assert (r.gather(1, nearest[:, None]) > 0).all()  # only the seed nearest the data scores > 0


# ---- seed screening (pretrain.seed_candidates) ----------------------------------------------------


def test_seed_screening_keeps_the_candidates_nearest_the_data(pipeline):
    """The kept seeds are the n of M candidates with the lowest first-action MSE, each MSE is that of the
    candidate's own unperturbed chain, and the kept bank survives a checkpoint round trip."""
    data, policy = pipeline["data"], copy.deepcopy(pipeline["pre"].policy)
    cfg = small_config(pretrain={"seed_candidates": 7})
    result = finish_sub_policies(policy, data, cfg, torch.Generator().manual_seed(screen_seed(cfg.seed)))
    screen, n = result["seed_screen"], policy.num_seeds
    mse = torch.tensor(screen["first_action_mse"])
    assert screen["candidates"] == 7 and len(mse) == 7
    assert screen["kept"] == sorted(mse.argsort()[:n].tolist()) and policy.config["seed_offsets"] == screen["kept"]
    states = sample_indices(data.size, min(cfg.pretrain.tau_states, data.size),
                            torch.Generator().manual_seed(screen_seed(cfg.seed)))
    for j in (screen["kept"][0], int(mse.argmax())):  # a kept and a rejected candidate, each on its own
        one = MultiSeedPolicy(dict(policy.config, num_seeds=1, seed_offsets=[j], eta=0.0, tau=0.0),
                              policy.obs_mean, policy.obs_std, backbone=policy.denoiser)
        first = one.base_chunks_from_cond(data.cond(states, policy.history))[:, 0, 0]
        torch.testing.assert_close(float(((first - data.actions[states]) ** 2).mean()), float(mse[j]),
                                   rtol=1e-5, atol=1e-7)
    bank = SeedBank.draw(7, len(policy.steps.timesteps), policy.horizon, policy.action_dim,
                         policy.config["base_seed"], temperature=policy.seed_temperature)
    assert torch.equal(policy.seed_noise, bank.noise[screen["kept"]])
    assert torch.equal(MultiSeedPolicy.from_state(policy.state()).seed_perturb, bank.perturb[screen["kept"]])
    assert result["tau"] > 0 and result["sub_policy_divergence"] > 0


def test_phase_b_reports_how_rare_starts_are(pipeline, tmp_path):
    """summary.json's pretrain block says what share of the data an episode's first steps are, and how many
    rows per batch the start options drew (the diffusion default's floor, 0.1, tops rare starts up)."""
    data, metrics, cfg = pipeline["data"], pipeline["pre"].metrics, pipeline["cfg"]
    assert metrics["start_natural_share"] == BatchSampler(data).natural_share > 0
    assert metrics["start_rows_per_batch"] == BatchSampler(data, start_floor=0.1).extra_rows(cfg.pretrain.batch_size)
    # the Gaussian ensemble draws its batches through the same sampler, and says so too
    cfg = small_config(policy="gaussian-ensemble", pretrain={"num_seeds": 1, "steps": 5, "start_floor": 0.9})
    gaussian = pretrain(PhaseContext(Run(tmp_path, tensorboard=False), cfg, data, torch.device("cpu"), False))
    assert gaussian.metrics["start_rows_per_batch"] == BatchSampler(data, start_floor=0.9).extra_rows(
        cfg.pretrain.batch_size) > 0


def test_a_screened_phase_b_is_the_unscreened_one_screened_after(tmp_path, tiny_hopper):
    """Screening does not touch training, and draws its states from its own stream: phase B with
    seed_candidates equals phase B without, screened afterwards (what scripts/rescreen.py relies on)."""
    data = load_offline_data(tiny_hopper)

    def phase_b(name: str, **pretrain_fields):
        cfg = apply_overrides(preset("smoke"), {"pretrain": pretrain_fields})
        ctx = PhaseContext(Run(tmp_path / name, tensorboard=False), cfg, data, torch.device("cpu"), progress=False)
        return cfg, pretrain(ctx).policy

    _, plain = phase_b("plain")
    cfg, screened = phase_b("screened", seed_candidates=6)
    assert all(torch.equal(a, b) for a, b in zip(plain.denoiser.state_dict().values(),
                                                 screened.denoiser.state_dict().values(), strict=True))
    finish_sub_policies(plain, data, cfg, torch.Generator().manual_seed(screen_seed(cfg.seed)))
    assert plain.config["seed_offsets"] == screened.config["seed_offsets"] and plain.tau == screened.tau
    assert torch.equal(plain.seed_noise, screened.seed_noise)
    with pytest.raises(ValueError, match="seed_candidates"):
        validate(apply_overrides(preset("smoke"), {"pretrain": {"seed_candidates": 2}}))
