"""Phase E: PPO math on hand-made rollouts, a short real run on Hopper with a tiny policy, exact
resume after SIGKILL, and a NaN stop that keeps the last good checkpoint."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from uepo import envs, ops
from uepo.config import OnlineConfig
from uepo.nets import ResidualGaussianHead, ValueNet
from uepo.phases import online
from uepo.policy import MultiSeedPolicy, policy_config
from uepo.runs import NonFiniteLossError, Run, seed_everything

torch.set_num_threads(1)  # two shared cores: more threads only contend
GAMMA, LAM = 0.9, 0.8


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------- PPO math


def test_gae_terminal_step_is_not_bootstrapped_truncated_step_is():
    # one env, 3 steps; the episode ends after step 1, the next one starts at step 2
    rewards, values = _t([1.0], [2.0], [3.0]), _t([0.5], [0.6], [0.7])
    next_values = _t([0.6], [9.0], [0.4])  # V(s_2), V(final state of episode 1), V(s_3)
    ended = _t([0.0], [1.0], [0.0])
    adv_term, ret_term = online.gae(rewards, values, next_values, ended, ended, GAMMA, LAM)
    adv_trunc, _ = online.gae(rewards, values, next_values, _t([0.0], [0.0], [0.0]), ended, GAMMA, LAM)
    d2 = 3.0 + GAMMA * 0.4 - 0.7
    d1_term, d1_trunc = 2.0 - 0.6, 2.0 + GAMMA * 9.0 - 0.6
    d0 = 1.0 + GAMMA * 0.6 - 0.5
    np.testing.assert_allclose(adv_term[:, 0], [d0 + GAMMA * LAM * d1_term, d1_term, d2])
    np.testing.assert_allclose(adv_trunc[:, 0], [d0 + GAMMA * LAM * d1_trunc, d1_trunc, d2])
    np.testing.assert_allclose(ret_term, adv_term + values)


def test_gae_without_episode_ends_is_the_discounted_sum_when_lambda_is_one():
    rewards = torch.rand(6, 2, dtype=torch.float64)
    values = torch.rand(6, 2, dtype=torch.float64)
    next_values = torch.cat([values[1:], torch.rand(1, 2, dtype=torch.float64)])
    zeros = torch.zeros(6, 2, dtype=torch.float64)
    _, returns = online.gae(rewards, values, next_values, zeros, zeros, GAMMA, 1.0)
    discounts = GAMMA ** torch.arange(6, dtype=torch.float64)
    expected0 = (discounts[:, None] * rewards).sum(0) + GAMMA**6 * next_values[-1]
    np.testing.assert_allclose(returns[0], expected0)


def test_clipped_policy_loss_stops_gradient_outside_the_trust_region():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.2, 1.02, 0.8, 0.98])).requires_grad_()
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clip_frac = online.clipped_policy_loss(logp, old, adv, clip=0.05)
    loss.backward()
    ratio = logp.detach().exp()
    # ratios beyond 1±ε in the direction the advantage pushes are clipped: no gradient
    np.testing.assert_allclose(logp.grad, [0.0, -ratio[1] / 4, 0.0, ratio[3] / 4], rtol=1e-6)
    expected = (-(1.05) - ratio[1] + 0.95 + ratio[3]) / 4
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert float(clip_frac) == pytest.approx(0.5)


def test_clipped_value_loss_takes_the_pessimistic_branch():
    old = torch.tensor([0.0, 0.0])
    values = torch.tensor([1.0, 0.02])
    returns = torch.tensor([1.0, 1.0])
    got = online.clipped_value_loss(values, old, returns, clip=0.05)
    # row 0: unclipped error 0, clipped (0.05 - 1)^2; row 1: both within the clip
    assert float(got) == pytest.approx(0.5 * ((0.95**2) + 0.98**2) / 2)
    plain = online.clipped_value_loss(values, old, returns, clip=0.0)
    assert float(plain) == pytest.approx(0.5 * 0.98**2 / 2)


def test_scaled_value_is_the_value_of_scaled_rewards():
    v = ValueNet(5, 16, 2)
    x = torch.randn(7, 5)
    before = v(x)
    online.scale_value(v, 0.1)
    torch.testing.assert_close(v(x), 0.1 * before)


# ------------------------------------------------------------------------------ runs on Hopper


def tiny_bundle() -> dict:
    """An offline bundle of a tiny random policy on Hopper-v5 (what checkpoints/offline.pt holds)."""
    seed_everything(0)
    cfg = policy_config("diffusion", 11, 3, history=2, horizon=4, num_seeds=2, width=32, num_blocks=1,
                        diffusion_steps=20, sampling_steps=3, head_hidden=32, head_layers=2, tau=0.1)
    policy = MultiSeedPolicy(cfg, torch.zeros(11), torch.ones(11))
    value = ValueNet(11, 32, 2)
    return {"policy": policy.state(), "selected": 1,
            "value": {"state_dict": value.state_dict(), "config": {"obs_dim": 11, "hidden": 32, "layers": 2}},
            "dataset": {"ref_min_score": -20.272305, "ref_max_score": 3234.3}, "env_id": "Hopper-v5"}


def tiny_config(**kw) -> OnlineConfig:
    base = dict(env_steps=1024, rollout_steps=256, num_envs=2, minibatch_size=64, epochs=2, eval_every=512,
                eval_episodes=2, checkpoint_every=256)
    return OnlineConfig(**{**base, **kw})


def metric_rows(run_dir: Path) -> list[list[str]]:
    """metrics.csv rows without time and throughput (the only columns that may differ run to run)."""
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row[1:] for row in list(csv.reader(f))[1:] if row[3] != "env_steps_per_s"]


def test_short_online_run_trains_the_head_only_and_logs_the_curve(tmp_path):
    bundle = tiny_bundle()
    run = Run(tmp_path / "run", tensorboard=False)
    summary = online.run_online(run, tiny_config(), bundle, seed=0, progress=False)
    run.close()
    assert summary["env_steps"] == 1024 and np.isfinite(summary["score_final"])
    rows = metric_rows(tmp_path / "run")
    eval_steps = sorted({int(r[1]) for r in rows if r[2] == "eval_score"})
    assert eval_steps == [0, 512, 1024]
    train_steps = sorted({int(r[1]) for r in rows if r[2] == "policy_loss"})
    assert train_steps == [256, 512, 768, 1024]
    assert all(np.isfinite(float(r[3])) for r in rows)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "online.pt", weights_only=False)
    assert saved["done"] and saved["selected"] == 1
    before, after = bundle["policy"]["state_dict"], saved["policy"]["state_dict"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("heads.1.") for k in changed)  # backbone and head 0 frozen
    assert MultiSeedPolicy.from_state(saved["policy"]).act(torch.zeros(1, 2, 11), 1).shape == (1, 3)


@pytest.mark.skipif(not ops.compiled_available(), reason="uepo._C not loaded")
@pytest.mark.parametrize("num_envs", [1, 3])
def test_the_one_call_acting_step_is_the_python_step(num_envs):
    """uepo::acting_step (what _collect calls) gives the per-call Python step's base (bit for bit), action,
    mean and scale (within rounding), the same draw from the same generator, and sees the head's in-place
    updates."""
    bundle = tiny_bundle()
    policy = MultiSeedPolicy.from_state(bundle["policy"])
    agent = online.OnlineAgent(policy, 1, online.load_value(bundle["value"], 11), tiny_config())
    with torch.no_grad():
        for p in agent.head.parameters():
            p.normal_(0, 0.2)  # a trained head: a residual mean and a state-dependent std
    hist = 2 * torch.randn(num_envs, 2, 11)
    with torch.inference_mode():
        one_call, python = agent.acting_step(num_envs), agent.acting_step(num_envs, fused=False)
        for _ in range(2):
            seed_everything(5)
            a = one_call(hist)
            seed_everything(5)
            b = python(hist)
            assert torch.equal(a[0], b[0])
            for x, y in zip(a[1:], b[1:], strict=True):
                torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)
            assert not torch.equal(a[1], a[2])  # a draw, not the mean
            for p in agent.head.parameters():
                p.add_(0.01)  # what an optimiser step does: in place


def test_truncated_steps_bootstrap_from_the_final_state(tmp_path):
    cfg = tiny_config()
    bundle = tiny_bundle()
    policy = MultiSeedPolicy.from_state(bundle["policy"])
    agent = online.OnlineAgent(policy, 1, online.load_value(bundle["value"], 11), cfg)
    short = dataclasses.replace(gym.spec("Hopper-v5"), max_episode_steps=5)
    vec = envs.make_vector_env(short, 2, 2)
    obs, _ = vec.reset(seed=[0, 1])
    seed_everything(0)
    buf, _ = online._collect(agent, vec, obs, 5, cfg, np.zeros(2), np.zeros(2, dtype=np.int64), [])
    assert buf.ended[4].tolist() == [1.0, 1.0] and buf.terminated[4].tolist() == [0.0, 0.0]
    # the same 5 steps again, replayed in a fresh env, give the final states themselves
    replay = envs.make_vector_env(short, 2, 2)
    replay.reset(seed=[0, 1])
    for t in range(5):
        final_obs, *_ , info = replay.step(buf.actions[t].clamp(-1, 1).double().numpy())
    finals = np.stack(info["final_obs"])[:, -1]
    with torch.no_grad():
        expected = agent.value(policy.normalize(torch.as_tensor(finals, dtype=torch.float32)))
        reset_states = agent.value(policy.normalize(torch.as_tensor(final_obs[:, -1], dtype=torch.float32)))
    torch.testing.assert_close(buf.next_values[4], expected)
    assert not torch.allclose(buf.next_values[4], reset_states)


RUNNER = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_online import tiny_bundle, tiny_config
    from uepo.phases.online import run_online
    from uepo.runs import Run
    run = Run(Path(sys.argv[1]), tensorboard=False)
    run_online(run, tiny_config(), tiny_bundle(), seed=0, progress=False)
""")


def test_resume_after_sigkill_reproduces_the_uninterrupted_run(tmp_path):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "full")], check=True, env=env, timeout=120)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it after its 3rd rollout logged, i.e. mid-run
        metrics = killed / "metrics.csv"
        if metrics.exists() and any(r[1] == "768" for r in metric_rows(killed) if len(r) == 4):
            break
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "online.pt").exists()
    assert not torch.load(killed / "checkpoints" / "online.pt", weights_only=False)["done"]
    subprocess.run([sys.executable, str(script), str(killed)], check=True, env=env, timeout=120)
    assert metric_rows(killed) == metric_rows(tmp_path / "full")


def test_non_finite_loss_stops_with_phase_and_step_and_keeps_the_checkpoint(tmp_path):
    run = Run(tmp_path / "run", tensorboard=False)
    # one update per rollout; the critic's first step (Adam: ~lr per weight) makes it overflow
    cfg = tiny_config(lr_critic=1e30, eval_every=10_000, epochs=1, minibatch_size=256)
    with pytest.raises(NonFiniteLossError, match=r"phase 'online', step 512"):
        online.run_online(run, cfg, tiny_bundle(), seed=0, progress=False)
    saved = run.load_checkpoint("online")
    assert saved["counters"]["env_steps"] == 256 and not saved["done"]
    assert all(torch.isfinite(v).all() for v in saved["agent"]["value"].values())


def test_resume_drops_rows_logged_after_the_checkpoint_and_a_torn_line(tmp_path):
    run = Run(tmp_path, tensorboard=False)
    run.log("improve", 5, amq_0=1.0)
    for step in (0, 256, 512):
        run.log("online", step, eval_score=float(step))
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("123.0,online,7")  # torn by the kill
    run.drop_metrics("online", 512)  # only the torn line goes
    assert [r[1] for r in metric_rows(tmp_path)] == ["5", "0", "256", "512"]
    run.drop_metrics("online", 256)
    run.log("online", 512, eval_score=-1.0)
    run.close()
    rows = metric_rows(tmp_path)
    assert rows == [["improve", "5", "amq_0", "1.0"], ["online", "0", "eval_score", "0.0"],
                    ["online", "256", "eval_score", "256.0"], ["online", "512", "eval_score", "-1.0"]]


def test_unfrozen_backbone_trains_through_the_differentiable_chain(tmp_path):
    bundle = tiny_bundle()
    cfg = tiny_config(env_steps=256, eval_every=10_000, epochs=1, freeze_backbone=False)
    policy = MultiSeedPolicy.from_state(bundle["policy"])
    agent = online.OnlineAgent(policy, 1, online.load_value(bundle["value"], 11), cfg)
    hist = torch.randn(5, 2, 11)
    with torch.no_grad():  # the differentiable chain is the function the fused sampler acts with
        torch.testing.assert_close(agent.base_with_grad(hist), policy.base_action(hist, 1),
                                   atol=1e-4, rtol=1e-4)
    run = Run(tmp_path, tensorboard=False)
    online.run_online(run, cfg, bundle, seed=0, progress=False)
    after = run.load_checkpoint("online")["policy"]["state_dict"]
    before = bundle["policy"]["state_dict"]
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("denoiser."))
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("heads.0."))


def test_ppo_from_scratch_trains_a_fresh_policy_with_phase_e_code(tmp_path, tiny_hopper):
    """The online peer (python -m uepo.baselines ppo-scratch): a fresh Gaussian policy, its backbone and head
    trained by phase E's PPO, its curve scored as phase E's is; the fresh std is the one asked for."""
    from uepo import baselines
    from uepo.data import load_offline_data

    data = load_offline_data(tiny_hopper)
    bundle = baselines.scratch_bundle(data.obs_dim, data.action_dim, data.obs_mean, data.obs_std, data.env_id,
                                      data.provenance, seed=0)
    fresh = MultiSeedPolicy.from_state(bundle["policy"])
    _, log_std = fresh.heads[0](torch.zeros(5, data.obs_dim), torch.zeros(5, data.action_dim))
    np.testing.assert_allclose(log_std.exp().detach(), 0.6, rtol=0.05)
    cfg = baselines.scratch_config(1024, num_envs=2, rollout_steps=256, eval_every=512, eval_episodes=1,
                                   checkpoint_every=512)
    summary = baselines.ppo_scratch(tiny_hopper, 0, tmp_path / "ppo", cfg, progress=False)
    assert summary["env_steps"] == 1024 and np.isfinite(summary["score_final"])
    trained = torch.load(tmp_path / "ppo" / "checkpoints" / "online.pt", weights_only=False)["agent"]
    before = fresh.denoiser.state_dict()
    assert any(not torch.equal(before[k], v) for k, v in trained["backbone"].items())  # the whole policy learns
    assert sorted({int(r[1]) for r in metric_rows(tmp_path / "ppo") if r[2] == "eval_score"}) == [0, 512, 1024]
    provenance = json.loads((tmp_path / "ppo" / "summary.json").read_text())["provenance"]
    assert provenance["cpu"] and provenance["torch"] == torch.__version__  # which code and CPU made the numbers


def test_value_warmup_trains_only_the_critic_first(tmp_path):
    """online.value_warmup_steps: within it the actor is left as offline training made it, V learns."""
    bundle = tiny_bundle()
    cfg = tiny_config(env_steps=512, value_warmup_steps=512, eval_episodes=0)
    run = Run(tmp_path / "run", tensorboard=False)
    online.run_online(run, cfg, bundle, seed=0, progress=False)
    run.close()
    agent = torch.load(tmp_path / "run" / "checkpoints" / "online.pt", weights_only=False)["agent"]
    head = {k[len("heads.1."):]: v for k, v in bundle["policy"]["state_dict"].items() if k.startswith("heads.1.")}
    assert all(torch.equal(head[k], v) for k, v in agent["head"].items())
    assert not all(torch.equal(bundle["value"]["state_dict"][k], v) for k, v in agent["value"].items())


def test_init_std_sets_the_heads_acting_std_in_every_state_and_keeps_its_mean():
    head = ResidualGaussianHead(5, 3, hidden=16, layers=2)
    obs, base = torch.randn(32, 5), torch.rand(32, 3) * 2 - 1
    mean_before, log_std_before = head(obs, base)
    head.reset_std(0.1)
    mean, log_std = head(obs, base)
    assert torch.equal(mean, mean_before) and not torch.allclose(log_std, log_std_before)
    assert torch.allclose(log_std.exp(), torch.full_like(log_std, 0.1), rtol=1e-5)
    assert all(p.requires_grad for p in head.log_std_layer.parameters())
    with pytest.raises(ValueError, match="std must be in"):
        head.reset_std(2.0)


def test_learn_std_false_keeps_the_acting_std_and_trains_the_mean(tmp_path):
    """online.learn_std False with init_std: the head acts with that std for the whole phase."""
    bundle = tiny_bundle()
    offline_head = {k[len("heads.1."):]: v for k, v in bundle["policy"]["state_dict"].items()
                    if k.startswith("heads.1.")}
    expected = ResidualGaussianHead(11, 3, hidden=32, layers=2)
    expected.load_state_dict(offline_head)
    expected.reset_std(0.2)
    cfg = tiny_config(env_steps=512, eval_episodes=0, init_std=0.2, learn_std=False)
    run = Run(tmp_path / "run", tensorboard=False)
    online.run_online(run, cfg, bundle, seed=0, progress=False)
    run.close()
    trained = torch.load(tmp_path / "run" / "checkpoints" / "online.pt", weights_only=False)["agent"]["head"]
    std_keys = [k for k in trained if k.startswith("log_std_layer.")]
    assert std_keys and all(torch.equal(trained[k], expected.state_dict()[k]) for k in std_keys)
    assert any(not torch.equal(trained[k], offline_head[k]) for k in trained if k not in std_keys)


def test_anneal_lr_decays_both_learning_rates_by_rollout_and_off_keeps_them(tmp_path):
    """online.anneal_lr: rollout k of K updates at (1 − k/K) of each learning rate, as CleanRL's PPO."""
    fractions = {}
    for anneal in (True, False):
        run = Run(tmp_path / str(anneal), tensorboard=False)
        online.run_online(run, tiny_config(eval_episodes=0, anneal_lr=anneal, lr_actor=1e-3), tiny_bundle(),
                          seed=0, progress=False)
        run.close()
        rows = metric_rows(tmp_path / str(anneal))
        fractions[anneal] = [float(r[3]) for r in sorted(rows, key=lambda r: int(r[1])) if r[2] == "lr_fraction"]
        agent = torch.load(tmp_path / str(anneal) / "checkpoints" / "online.pt", weights_only=False)["agent"]
        last = fractions[anneal][-1]
        assert agent["opt_actor"]["param_groups"][0]["lr"] == pytest.approx(last * 1e-3)
        assert agent["opt_critic"]["param_groups"][0]["lr"] == pytest.approx(last * OnlineConfig.lr_critic)
    assert fractions[True] == [1.0, 0.75, 0.5, 0.25] and fractions[False] == [1.0] * 4


def test_spec_3e_restores_the_specs_phase_e_and_names_every_default_that_differs():
    from uepo.cli import parse_args
    from uepo.config import SPEC_3E

    spec = SPEC_3E["online"]
    differs = {name for name, value in spec.items() if getattr(OnlineConfig(), name) != value}
    assert differs == {"gamma", "clip", "lr_actor"}, \
        "a phase-E default moved away from SPEC §3E: say so in SPEC_3E's comment and RESULTS"
    assert (OnlineConfig().gamma, spec["gamma"]) == (0.995, 0.99) and (OnlineConfig().clip, spec["clip"]) == (0.2, 0.05)
    assert OnlineConfig().lr_actor == 0 and spec["lr_actor"] == 2e-5  # 0: by family, 2e-4 for locomotion
    cfg = parse_args(["--spec-3e", "--preset", "smoke"])
    assert all(getattr(cfg.online, name) == value for name, value in spec.items())
    assert cfg.online.env_steps == 2048  # the preset's budget is kept: the field set changes values, not budgets
    assert parse_args(["--spec-3e", "--online.gamma", "0.98"]).online.gamma == 0.98  # a field flag still wins
