"""Adroit end to end: small datasets in the layout and with the metadata of Minari's ``D4RL/*`` Adroit
sets, made here from the real gymnasium-robotics envs; the smoke preset through every phase, online
included, then ``python -m uepo.evaluate`` with a video."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_dataset, smooth_random_policy

from uepo import tasks
from uepo.data import load_offline_data
from uepo.envs import video_writer_problem
from uepo.evaluate import main as evaluate_main
from uepo.train import main as train_main

gymnasium_robotics = pytest.importorskip(
    "gymnasium_robotics", reason="the Adroit extra is not installed: pip install .[adroit]")

torch.set_num_threads(1)

# D4RL's reference returns for Adroit (d4rl/infos.py), written out again here to check uepo.tasks
D4RL_ADROIT = {"pen": (96.262799, 3076.83), "door": (-56.512833, 2880.57),
               "hammer": (-274.856578, 12794.13), "relocate": (-6.425911, 4233.88)}
TASKS = {"pen": ("AdroitHandPen-v1", 100, 24), "door": ("AdroitHandDoor-v1", 200, 28)}


@pytest.fixture(scope="module")
def adroit_datasets(minari_root):
    """D4RL/{pen,door}/human-v2 as Minari stores them: env spec with D4RL's episode length, ref scores."""
    ids = {}
    for task, (env_id, length, act_dim) in TASKS.items():
        ids[task] = make_dataset(f"D4RL/{task}/human-v2", env_id=env_id, steps=2 * length, seed=1,
                                 max_episode_steps=length, ref_scores=D4RL_ADROIT[task],
                                 policy=smooth_random_policy(act_dim), record_episode_steps=True)
    return ids


def test_adroit_reference_scores_are_d4rls():
    for task, (low, high) in D4RL_ADROIT.items():
        env_id = f"AdroitHand{task.capitalize()}-v1"
        assert tasks.robot_name(env_id) == task and tasks.family(task).name == "adroit"
        assert tasks.reference_scores(env_id) == pytest.approx((low, high))  # no metadata: D4RL's constants
        np.testing.assert_allclose(tasks.normalized_score([low, high, (low + high) / 2], (low, high)), [0, 100, 50])
    assert tasks.family("hopper").name == "locomotion"


@pytest.mark.parametrize("task", list(TASKS))
def test_smoke_end_to_end_with_the_online_phase_and_a_video(adroit_datasets, task, tmp_path, capsys):
    dataset_id = adroit_datasets[task]
    data = load_offline_data(dataset_id)
    env_id, length, act_dim = TASKS[task]
    assert data.env_id == env_id and data.action_dim == act_dim and data.robot == task
    assert data.env_spec.max_episode_steps == length and data.env_spec.kwargs == {"reward_type": "dense"}
    assert data.provenance["ref_source"] == "metadata" and data.terminals.sum() == 0  # Adroit never terminates
    run_dir = tmp_path / "run"
    # the family's settings, not the smoke preset's: 400-wide dynamics, H_ope 20, online lr_actor 5e-6
    flags = ["--dataset", dataset_id, "--preset", "smoke", "--run_dir", str(run_dir), "--dynamics.hidden", "0",
             "--improve.ope_horizon", "0", "--online.eval_episodes", "1"]
    assert train_main(flags) == 0, capsys.readouterr().err
    s = json.loads((run_dir / "summary.json").read_text())
    assert len(s["phases_run"]) == 6 and s["online"]["env_steps"] > 0 and s["online"]["lr_actor"] == 5e-6
    # a smoke-trained policy may act at a random policy's level or below half the data's score
    # (evaluate.score_warnings); nothing else is flagged
    assert s["scores"]["selected"] is not None
    assert all("random policy's level" in w or "not learned the data's" in w for w in s["warnings"])
    model = torch.load(run_dir / "checkpoints" / "dynamics.pt", weights_only=False)["model"]
    assert model["layers.0.weight"].shape[-1] == 400
    rows = [r.strip().split(",") for r in open(run_dir / "metrics.csv")]
    assert ["improve", "0", "amq_horizon", "20.0"] in [r[1:] for r in rows]
    # the normalised score of an episode uses D4RL's constants, as in the D4RL tables
    assert set(s["evaluation"]["selected"]["lengths"]) == {length}  # the recorded episode length
    ret = s["evaluation"]["selected"]["returns"][0]
    low, high = D4RL_ADROIT[task]
    assert s["evaluation"]["selected"]["scores"][0] == pytest.approx(100 * (ret - low) / (high - low))

    video = tmp_path / f"{task}.mp4"
    if video_writer_problem() is not None:
        pytest.skip(f"no mp4 writer: {video_writer_problem()}")
    code = evaluate_main([str(run_dir), "--episodes", "1", "--video", str(video)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert env_id in out.out and video.stat().st_size > 0
