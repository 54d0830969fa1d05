"""The online-IQL peer (python -m uepo.baselines iql-online): AWR on a run's phase-A critics, then IQL
updates on dataset + online transitions, scored as phase E is, and resumed to the same numbers."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from uepo import iql_online
from uepo.config import preset, save_yaml
from uepo.data import load_offline_data
from uepo.phases import PhaseContext
from uepo.phases.critics import train_critics
from uepo.runs import Run

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def source_run(tiny_hopper, tmp_path_factory):
    """A run directory whose phase A finished (the smoke preset's critics on the tiny Hopper set)."""
    cfg = preset("smoke")
    cfg.dataset = tiny_hopper
    run = Run(tmp_path_factory.mktemp("source"), tensorboard=False)
    save_yaml(cfg, run.dir / "config.yaml")
    train_critics(PhaseContext(run, cfg, load_offline_data(tiny_hopper), torch.device("cpu"), False))
    run.close()
    return run.dir


def tiny_config(**overrides) -> iql_online.IQLOnlineConfig:
    base = dict(env_steps=240, actor_steps=40, batch_size=32, hidden=32, eval_every=120, eval_episodes=1,
                log_every=40, checkpoint_every=80)
    return iql_online.IQLOnlineConfig(**{**base, **overrides})


def test_awr_weights_favour_actions_with_a_higher_advantage():
    """One AWR step against critics where Q − V rises with a_0 moves the actor's mean up in a_0."""
    torch.manual_seed(0)
    actor = iql_online.GaussianActor(3, 2, 16, 1)

    class Q(torch.nn.Module):
        def forward(self, s, a):
            return a[:, 0]

    s = torch.randn(256, 3)
    a = torch.rand(256, 2) * 2 - 1
    before = actor(s)[:, 0].mean().item()
    opt = torch.optim.SGD(actor.parameters(), lr=0.1)
    loss = iql_online.awr_loss(actor, Q(), lambda x: torch.zeros(x.shape[0]), s, a, beta=3.0, max_weight=100.0)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert actor(s)[:, 0].mean().item() > before


def test_beta_is_applied_in_iql_reward_units(tiny_hopper):
    data = load_offline_data(tiny_hopper)
    spread = float(data.episode_returns.max() - data.episode_returns.min())
    assert iql_online.advantage_beta(data, tiny_config()) == pytest.approx(3.0 * 1000 / spread)
    assert iql_online.advantage_beta(data, tiny_config(beta_on_iql_scale=False)) == 3.0


def test_iql_online_trains_from_phase_a_critics_and_logs_phase_e_curve(source_run, tmp_path):
    summary = iql_online.iql_online(source_run, 0, tmp_path / "iql", tiny_config(), progress=False)
    assert summary["env_steps"] == 240 and np.isfinite(summary["score_final"])
    assert json.loads((tmp_path / "iql" / "summary.json").read_text())["provenance"]["cpu"]
    saved = torch.load(tmp_path / "iql" / "checkpoints" / "iql_online.pt", weights_only=False)
    critics = torch.load(source_run / "checkpoints" / "critics.pt", weights_only=False)
    assert saved["nets"]["q"].keys() == critics["q"].keys()  # the very same critics, trained on
    assert any(not torch.equal(critics["q"][k], v) for k, v in saved["nets"]["q"].items())
    assert saved["buffer"]["obs"].shape[0] == 240  # every online transition, the dataset kept apart
    with open(tmp_path / "iql" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    evals = {int(r["step"]) for r in rows if r["key"] == "eval_score" and r["phase"] == "online"}
    assert sorted(evals) == [0, 120, 240]
    assert any(r["phase"] == "iql_actor" and r["key"] == "actor_loss" for r in rows)


def test_iql_online_resumes_to_the_same_numbers(source_run, tmp_path):
    """A run stopped at 160 env steps (its checkpoint) and continued to 240 ends as one run of 240."""
    iql_online.iql_online(source_run, 0, tmp_path / "once", tiny_config(), progress=False)
    iql_online.iql_online(source_run, 0, tmp_path / "twice", tiny_config(env_steps=160), progress=False)
    iql_online.iql_online(source_run, 0, tmp_path / "twice", tiny_config(), progress=False)
    once, twice = (torch.load(tmp_path / d / "checkpoints" / "iql_online.pt", weights_only=False)
                   for d in ("once", "twice"))
    for name in ("actor", "q", "v"):
        for k, v in once["nets"][name].items():
            assert torch.equal(v, twice["nets"][name][k]), (name, k)
    assert torch.equal(once["buffer"]["obs"], twice["buffer"]["obs"])


def test_iql_online_refuses_a_checkpoint_of_other_settings(source_run, tmp_path):
    iql_online.iql_online(source_run, 0, tmp_path / "run", tiny_config(env_steps=80), progress=False)
    with pytest.raises(ValueError, match="beta"):
        iql_online.iql_online(source_run, 0, tmp_path / "run", tiny_config(beta=1.0), progress=False)


def test_iql_online_says_what_to_pass_without_a_finished_phase_a(tmp_path):
    with pytest.raises(FileNotFoundError, match="phase A"):
        iql_online.iql_online(tmp_path, 0, tmp_path / "run", tiny_config(), progress=False)


def test_config_fields_all_have_help():
    assert all(fld.metadata.get("help") for fld in dataclasses.fields(iql_online.IQLOnlineConfig))
