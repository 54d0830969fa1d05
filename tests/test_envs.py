"""Environments: history wrapper, vector envs, exact state save/restore, episodes, video, the
shipped dataset."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from uepo import envs
from uepo.datasets import DEFAULT_DATASET_ID, SHIPPED_ROOT, shipped_dataset_ids, use_shipped_dataset

torch.set_num_threads(1)  # two shared cores: more threads only contend

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_history_pads_with_first_state_then_slides():
    raw = gym.make("Hopper-v5")
    wrapped = envs.make_env("Hopper-v5", history=3)
    first, _ = raw.reset(seed=5)
    hist, _ = wrapped.reset(seed=5)
    assert hist.shape == (3, 11)
    np.testing.assert_array_equal(hist, np.stack([first] * 3))
    states = [first]
    rng = np.random.default_rng(0)
    for _ in range(4):
        a = rng.uniform(-1, 1, 3)
        states.append(raw.step(a)[0])
        hist = wrapped.step(a)[0]
    np.testing.assert_array_equal(hist, np.stack(states[-3:]))  # oldest first, newest last


def test_vector_env_returns_histories_and_final_obs_on_truncation():
    vec = envs.make_vector_env(dataclasses.replace(gym.spec("Hopper-v5"), max_episode_steps=4), 2, 2)
    obs, _ = vec.reset(seed=[0, 1])
    assert obs.shape == (2, 2, 11)
    for _ in range(4):
        obs, _, terminated, truncated, info = vec.step(np.zeros((2, 3)))
    assert truncated.all() and not terminated.any()
    assert info["final_obs"][0].shape == (2, 11)
    np.testing.assert_array_equal(obs[:, 0], obs[:, 1])  # the new episodes start padded
    assert not np.array_equal(info["final_obs"][0][-1], obs[0, -1])


def test_history_vector_env_returns_what_gymnasium_sync_vector_env_returns():
    spec = dataclasses.replace(gym.spec("Hopper-v5"), max_episode_steps=6)  # truncations and terminations
    ours = envs.make_vector_env(spec, 3, 2)
    theirs = gym.vector.SyncVectorEnv([lambda: envs.make_env(spec, 2) for _ in range(3)],
                                      autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    np.testing.assert_array_equal(ours.reset(seed=[5, 6, 7])[0], theirs.reset(seed=[5, 6, 7])[0])
    ended = 0
    for a in np.random.default_rng(0).uniform(-1, 1, (40, 3, 3)):
        mine, gyms = ours.step(a), theirs.step(a)
        for u, v in zip(mine[:4], gyms[:4], strict=True):
            np.testing.assert_array_equal(u, v)
        for k in np.flatnonzero(gyms[2] | gyms[3]):
            np.testing.assert_array_equal(mine[4]["final_obs"][k], gyms[4]["final_obs"][k])
            ended += 1
    assert ended >= 6


def _roll(vec, actions):
    out = []
    for a in actions:
        o, r, te, tr, _ = vec.step(a)
        out.append((o.copy(), r.copy(), te.copy(), tr.copy()))
    return out


def test_env_state_restore_continues_exactly_across_resets():
    spec = dataclasses.replace(gym.spec("Hopper-v5"), max_episode_steps=30)
    actions = np.random.default_rng(1).uniform(-1, 1, (90, 2, 3))
    a = envs.make_vector_env(spec, 2, 2)
    a.reset(seed=[3, 4])
    _roll(a, actions[:45])
    saved = envs.capture_env_state(a)
    expected = _roll(a, actions[45:])
    b = envs.make_vector_env(spec, 2, 2)
    b.reset(seed=[100, 200])  # different episodes: everything must come from the saved state
    envs.restore_env_state(b, saved)
    got = _roll(b, actions[45:])
    assert sum(int(x[3].sum()) for x in expected) >= 2  # the window crosses auto-resets
    for x, y in zip(expected, got, strict=True):
        for u, v in zip(x, y, strict=True):
            np.testing.assert_array_equal(u, v)


def test_restore_refuses_a_different_number_of_envs():
    a = envs.make_vector_env("Hopper-v5", 2, 1)
    a.reset(seed=[0, 1])
    b = envs.make_vector_env("Hopper-v5", 3, 1)
    b.reset(seed=[0, 1, 2])
    with pytest.raises(ValueError, match="num_envs"):
        envs.restore_env_state(b, envs.capture_env_state(a))


def test_missing_env_package_names_the_pip_package(monkeypatch):
    def unregistered(env_id, **kwargs):  # what gym.make says where gymnasium-robotics is not installed
        raise envs.gym.error.NameNotFound(f"Environment `{env_id}` doesn't exist.")

    monkeypatch.setattr(envs.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(envs.gym, "make", unregistered)
    with pytest.raises(RuntimeError, match="pip install gymnasium-robotics"):
        envs.make_env("AdroitHandPen-v1")


def test_mujoco_warnings_are_shown_once_each(capfd):
    """MuJoCo printed the same compiler warning for every env made: 80 lines in one HalfCheetah run's log."""
    mujoco = pytest.importorskip("mujoco")
    for _ in range(2):
        envs.make_env("HalfCheetah-v5").close()
    handler = mujoco.get_mju_user_warning()
    assert handler is not None
    for _ in range(3):
        handler("uepo test warning A")
    handler("uepo test warning B")
    err = capfd.readouterr().err
    assert err.count("uepo test warning A") == 1 and err.count("uepo test warning B") == 1
    assert err.count("settotalmass") <= 1


def test_run_episodes_depends_only_on_seed_not_on_parallelism():
    def act(obs):
        return np.tanh(obs[:, -1, :3])  # a deterministic state feedback

    r1, l1 = envs.run_episodes(act, "Hopper-v5", 4, seed=7, history=2, num_envs=1)
    r4, l4 = envs.run_episodes(act, "Hopper-v5", 4, seed=7, history=2, num_envs=4)
    np.testing.assert_array_equal(r1, r4)
    np.testing.assert_array_equal(l1, l4)
    assert len(set(r1.tolist())) > 1  # seeds differ per episode


def test_shipped_dataset_loads_and_names_its_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))  # a root without it
    assert DEFAULT_DATASET_ID in shipped_dataset_ids()
    assert use_shipped_dataset(DEFAULT_DATASET_ID)
    import minari

    ds = minari.load_dataset(DEFAULT_DATASET_ID)
    prov = json.loads((SHIPPED_ROOT / DEFAULT_DATASET_ID / "provenance.json").read_text())
    assert ds.total_episodes == len(prov["episodes_kept"]) and ds.total_steps == prov["steps"]
    assert envs.env_spec_from_dataset(ds).id == "Hopper-v5"
    assert ds.storage.metadata["ref_max_score"] == pytest.approx(3234.3)
    ep = ds[0]
    assert ep.terminations.any() or ep.truncations.any()
    assert not use_shipped_dataset("local/hopper/medium-v0")  # not shipped: leaves the path alone


def test_video_is_written_or_the_reason_is_given(tmp_path):
    problem = envs.video_writer_problem()
    path = tmp_path / "ep.mp4"
    if problem is not None:
        with pytest.raises(RuntimeError, match="pip install"):
            envs.record_video(lambda o: np.zeros((len(o), 3)), "Hopper-v5", path, seed=0, max_steps=3)
        return
    try:
        ret, steps = envs.record_video(lambda o: np.zeros((len(o), 3)), "Hopper-v5", path, seed=0,
                                       history=2, max_steps=5)
    except RuntimeError as exc:  # no OpenGL on this machine: the message must say what to install
        assert "MUJOCO_GL" in str(exc)
        pytest.skip(f"no offscreen OpenGL here: {exc}")
    import imageio

    frames = imageio.mimread(path)
    assert steps == 5 and len(frames) == 6 and frames[0].ndim == 3


SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


@pytest.mark.skipif(not (SHARED_DATASETS / "local" / "hopper" / "medium-v0").exists(),
                    reason="the source dataset (shared/datasets/local/hopper/medium-v0) is not beside the repo")
def test_shipped_episodes_are_the_source_episodes_its_provenance_names(monkeypatch):
    import minari

    prov = json.loads((SHIPPED_ROOT / DEFAULT_DATASET_ID / "provenance.json").read_text())
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(SHARED_DATASETS))
    source = minari.load_dataset(prov["source_id"])
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(SHIPPED_ROOT))
    shipped = minari.load_dataset(DEFAULT_DATASET_ID)
    picked = list(source.iterate_episodes(episode_indices=prov["episodes_kept"]))
    for mine, theirs in zip(shipped.iterate_episodes(), picked, strict=True):
        for field in ("observations", "actions", "rewards", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(mine, field), getattr(theirs, field))
