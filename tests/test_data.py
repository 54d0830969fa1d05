"""uepo.data: Minari loading, terminations vs truncations, normalisation, windows, provenance, errors."""

from __future__ import annotations

import minari
import numpy as np
import pytest
import torch
from conftest import HOPPER_REF, make_dataset

from uepo.data import DatasetError, load_offline_data

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tiny_hopper):
    return load_offline_data(tiny_hopper)


def test_flat_arrays_match_the_minari_episodes(data, tiny_hopper):
    episodes = list(minari.load_dataset(tiny_hopper).iterate_episodes())
    assert data.size == sum(len(ep.actions) for ep in episodes)
    first = episodes[0]
    n = len(first.actions)
    np.testing.assert_allclose(data.obs[:n].numpy(), first.observations[:-1], rtol=1e-6)
    np.testing.assert_allclose(data.next_obs[:n].numpy(), first.observations[1:], rtol=1e-6)
    np.testing.assert_allclose(data.rewards[:n].numpy(), first.rewards, rtol=1e-6)
    assert data.episode_returns.shape[0] == len(episodes)
    assert data.obs_dim == 11 and data.action_dim == 3 and data.env_id == "Hopper-v5"


def test_terminations_and_truncations_kept_apart(data, tiny_hopper):
    episodes = list(minari.load_dataset(tiny_hopper).iterate_episodes())
    assert sum(bool(ep.truncations[-1]) for ep in episodes) > 0  # the 60-step cap truncates some
    assert data.terminals.sum() == sum(int(np.sum(ep.terminations)) for ep in episodes)
    assert data.timeouts.sum() == sum(int(np.sum(ep.truncations)) for ep in episodes)
    assert float((data.terminals * data.timeouts).sum()) == 0.0


def test_state_normalisation_statistics(data):
    z = data.normalize(data.obs)
    np.testing.assert_allclose(z.mean(0).numpy(), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0, unbiased=False).numpy(), 1, atol=1e-3)
    assert data.actions.abs().max() <= 1 - 1e-5 + 1e-7


def test_chunks_pad_past_the_episode_end_with_a_mask(data):
    end = int(data.episode_end[0])  # one past the first episode's last step
    idx = torch.tensor([0, end - 3, end - 1, end])
    chunks, mask = data.chunks(idx, 8)
    assert mask[0].all() and mask[3].all()
    assert mask[1].tolist() == [True] * 3 + [False] * 5
    assert mask[2].tolist() == [True] + [False] * 7
    for row in (1, 2):  # padding repeats the episode's last action, never the next episode's
        assert torch.equal(chunks[row, ~mask[row]], data.actions[end - 1].expand(int((~mask[row]).sum()), -1))
    assert torch.equal(chunks[0], data.actions[:8])
    assert torch.equal(chunks[3, 0], data.actions[end])


def test_histories_pad_at_the_episode_start(data):
    start2 = int(data.episode_end[0])
    h = data.histories(torch.tensor([0, 1, start2, start2 + 1]), 3)
    assert torch.equal(h[0], data.obs[0].expand(3, -1))
    assert torch.equal(h[1], data.obs[[0, 0, 1]])
    assert torch.equal(h[2], data.obs[start2].expand(3, -1))  # not the previous episode's states
    assert torch.equal(h[3], data.obs[[start2, start2, start2 + 1]])
    nh = data.next_histories(torch.tensor([0]), 2)
    assert torch.equal(nh[0], torch.stack([data.obs[0], data.next_obs[0]]))


def test_provenance_and_scores(data, tiny_hopper):
    p = data.provenance
    assert p["dataset_id"] == tiny_hopper and p["env_id"] == "Hopper-v5" and p["total_steps"] == data.size
    assert len(p["content_sha256"]) == 64 and p["ref_source"] == "metadata"
    again = load_offline_data(tiny_hopper)
    assert again.provenance["content_sha256"] == p["content_sha256"]
    returns = data.episode_returns.numpy()
    expected = 100 * (returns - HOPPER_REF[0]) / (HOPPER_REF[1] - HOPPER_REF[0])
    np.testing.assert_allclose(data.normalized_score(returns), expected)
    assert p["episode_score_mean"] == pytest.approx(expected.mean())


def test_other_content_other_hash_and_d4rl_fallback(minari_root, data):
    make_dataset("test/hopper/norefs-v0", steps=150, seed=7, ref_scores=None)
    other = load_offline_data("test/hopper/norefs-v0")
    assert other.provenance["content_sha256"] != data.provenance["content_sha256"]
    assert other.provenance["ref_source"] == "d4rl-constants"  # hopper's D4RL constants (SPEC §1)
    assert (other.ref_min_score, other.ref_max_score) == HOPPER_REF


def test_wrong_id_says_what_to_do(minari_root):
    with pytest.raises(DatasetError, match="MINARI_DATASETS_PATH.*--download"):
        load_offline_data("test/hopper/does-not-exist-v0")


def test_discrete_actions_are_refused(minari_root):
    make_dataset("test/cartpole/tiny-v0", env_id="CartPole-v1", steps=60, ref_scores=None,
                 policy=lambda obs, rng: int(rng.integers(2)))
    with pytest.raises(DatasetError, match="continuous actions"):
        load_offline_data("test/cartpole/tiny-v0")


def test_non_finite_data_is_refused(minari_root):
    def nan_policy(obs, rng):
        return np.full(3, np.nan, dtype=np.float32)

    make_dataset("test/hopper/nan-v0", steps=20, seed=3, policy=nan_policy)
    with pytest.raises(DatasetError, match="non-finite"):
        load_offline_data("test/hopper/nan-v0")
