"""Model-based evaluation that cannot blow up, and a selection checked against the real env.

- AM-Q on a robot that never terminates (HalfCheetah-v5 data made here), with a dynamics model that
  diverges: the support (state clipping, disagreement stop, Q bounds) keeps Ĵ inside what a return
  can be; without it the same rollout leaves any plausible range.
- An absurd critic makes every Ĵ implausible: phase D says so and does not select on it.
- Sub-policies whose real-env scores differ clearly are ranked by AM-Q as the real env ranks them.
- The termination functions agree with Gymnasium's v5 envs on random states.
"""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

from uepo.config import ImproveConfig, accept_z_of, apply_overrides, preset, resolve_by_policy, validate
from uepo.data import load_offline_data
from uepo.evaluate import (
    RANDOM_LEVEL,
    evaluate_policy,
    evaluation_episode_scores,
    rank_correlation,
    regret_floor,
    score_warnings,
    selection_report,
)
from uepo.phases import BatchSampler, PhaseContext
from uepo.phases.critics import train_critics
from uepo.phases.dynamics import termination_fn, train_dynamics
from uepo.phases.improve import (
    AmQ,
    Support,
    am_q,
    fresh_amq,
    head_act_fn,
    held_out_starts,
    improve,
    paired_z,
    select_sub_policy,
)
from uepo.phases.pretrain import masked_mse, pretrain
from uepo.policy import MultiSeedPolicy, policy_config
from uepo.runs import Run, seed_everything
from uepo.train import offline_warnings

torch.set_num_threads(1)
DEFAULT_FACTOR = ImproveConfig().ope_support_factor

SMALL = {
    "critics": {"steps": 300, "batch_size": 128, "hidden": 32, "layers": 2},
    "pretrain": {"steps": 60, "width": 32, "num_blocks": 1, "tau_states": 64},
    "dynamics": {"ensemble": 3, "elites": 2, "hidden": 32, "layers": 2, "max_epochs": 8,
                 "max_updates_per_epoch": 20, "augment_ratio": 0.3, "augment_batch": 64, "patience": 8},
    "improve": {"steps": 10, "ope_every": 5, "ope_states": 16, "ope_horizon": 60, "std_warmup_steps": 10,
                "eval_episodes": 0},
}


def phases_abc(dataset_id: str, root, **overrides):
    seed_everything(0)
    data = load_offline_data(dataset_id)
    cfg = preset("smoke")
    apply_overrides(cfg, copy.deepcopy(SMALL))
    apply_overrides(cfg, overrides)
    ctx = PhaseContext(Run(root, tensorboard=False), cfg, data, torch.device("cpu"), progress=False)
    critics = train_critics(ctx)
    pre = pretrain(ctx)
    return ctx, critics, pre, train_dynamics(ctx, pre.policy)


@pytest.fixture(scope="module")
def cheetah(tiny_cheetah, tmp_path_factory):
    return phases_abc(tiny_cheetah, tmp_path_factory.mktemp("cheetah"))


def test_amq_of_a_diverging_model_without_termination_stays_inside_the_support(cheetah):
    ctx, critics, pre, dynamics = cheetah
    data = ctx.data
    assert dynamics.holdout_disagreement is not None and dynamics.disagreement_quantile(0.99) > 0
    diverging = copy.deepcopy(dynamics)
    diverging.model.out_std.mul_(200.0)  # every predicted Δs 200× too large: states run off
    starts = data.histories(torch.arange(0, data.size, data.size // 16)[:16], pre.policy.history)
    act = head_act_fn(pre.policy, pre.policy.heads[0], 0)
    support = Support.of(data, diverging, critics, ctx.cfg.critics.gamma, 0.1, DEFAULT_FACTOR)
    assert support.q_low < 0 < support.q_high  # cheetah rewards have both signs

    inf = torch.full((data.obs_dim,), math.inf)  # no clipping, no stop: what a user got before
    free = am_q(act, diverging, critics, starts, 200, data.normalize,
                Support(-inf, inf, math.inf, support.q_low, support.q_high))
    assert not free.plausible and abs(free.unclipped) > 10 * support.q_high, free
    bounded = am_q(act, diverging, critics, starts, 200, data.normalize, support)
    assert math.isfinite(bounded.value) and support.q_low <= bounded.value <= support.q_high
    assert bounded.plausible, bounded
    # the real model, inside its support, is plausible too
    sane = am_q(act, dynamics, critics, starts, 200, data.normalize, support)
    assert sane.plausible and sane.support_fraction > 0 and sane.clip_fraction < 0.5, sane


def test_a_row_stops_where_the_ensemble_disagrees(cheetah):
    ctx, critics, pre, dynamics = cheetah
    data = ctx.data
    starts = data.histories(torch.arange(0, 64), pre.policy.history)
    act = head_act_fn(pre.policy, pre.policy.heads[0], 0)
    loose = Support.of(data, dynamics, critics, 0.99, 0.1, DEFAULT_FACTOR)
    never = Support(loose.obs_low, loose.obs_high, math.inf, loose.q_low, loose.q_high, loose.q_floor)
    tight = Support(loose.obs_low, loose.obs_high, dynamics.disagreement_quantile(0.05), loose.q_low, loose.q_high,
                    loose.q_floor)
    assert am_q(act, dynamics, critics, starts, 50, data.normalize, never).support_fraction == 1.0
    cut = am_q(act, dynamics, critics, starts, 50, data.normalize, tight)
    assert cut.support_fraction < 0.5
    assert loose.q_low <= loose.q_floor <= loose.q_high


def test_an_absurd_critic_is_reported_and_not_selected_on(tiny_hopper, tmp_path, capsys):
    ctx, critics, pre, dynamics = phases_abc(tiny_hopper, tmp_path)
    broken = copy.copy(critics)
    broken.q_value = lambda s, a: torch.full((s.shape[0],), -1e18)
    result = improve(ctx, pre.policy, broken, dynamics)
    assert result.selection["method"] == "imitation-fallback"
    assert not any(result.selection["amq_plausible"])
    warnings = result.selection["warnings"]
    assert any("implausible" in w for w in warnings) and any("no sub-policy" in w for w in warnings)
    assert "uepo: WARNING" in capsys.readouterr().err
    # Ĵ itself is clipped to the bounds; the unclipped mean is what flags it
    assert all(result.selection["support"]["q_low"] <= v <= 0 for v in result.amq_best)


@pytest.mark.parametrize(("selected", "raw", "method", "expect"), [
    (30.0, [25.0, 0.5, 31.0], "amq", []),  # one raw μ^i that falls is a weak sub-policy, not a broken run
    (-0.2, [25.0, -0.2, 9.0], "amq", ["selected sub-policy 1 scores -0.2", "--selection amq-topk-online"]),
    (-0.2, [25.0, -0.2, 9.0], "amq-topk-online", ["selected sub-policy 1 scores -0.2"]),
    (1.9, [1.0, 0.3, -0.6], "amq", ["selected sub-policy 1", "every raw sub-policy"]),
    (None, [], "amq", []),  # no reference returns: nothing to compare with
])
def test_scores_at_a_random_policys_level_are_reported(selected, raw, method, expect):
    scores = {"selected": selected, "raw": raw, "selected_index": 1, "amq_selected_candidates": [50.0, 63.2, 40.0],
              "dataset_episodes": 10.1, "selection_method": method}
    warnings = score_warnings(scores)
    assert len(warnings) == len([e for e in expect if e.startswith(("selected", "every"))])
    text = " | ".join(warnings)
    for part in expect:
        assert part in text
    if warnings:
        assert "10.1" in text and f"below {RANDOM_LEVEL:g}" in text
    assert ("amq-topk-online" in text) == (method == "amq" and selected is not None and selected < RANDOM_LEVEL)


@pytest.mark.parametrize(("selected", "data", "warned"), [
    (2.9, 8.2, True),  # HalfCheetah medium-replay s1 (RESULTS 0o): stands still, above the random level
    (4.2, 8.2, False),  # at half the data's score: weak, not broken
    (15.0, 35.6, True),
    (3.0, 3.5, False),  # data near the random level: half of it says nothing
    (1.0, 8.2, False),  # already reported as a random policy's level, once
])
def test_a_selected_policy_below_half_the_datas_score_is_reported(selected, data, warned):
    scores = {"selected": selected, "raw": [selected, 20.0], "selected_index": 0, "amq_selected_candidates": [50.0],
              "dataset_episodes": data, "selection_method": "amq"}
    text = " | ".join(score_warnings(scores))
    assert ("has not learned the data's behaviour" in text) == warned
    assert (f"({data:.1f})" in text and f"scores {selected:.1f}" in text) == warned


@pytest.mark.parametrize(("selected_index", "improved", "named"), [
    (3, [55.0, 16.1, 51.9, 11.5], 0),  # walker2d medium s3 with the floor (RESULTS 0r): 0 walks, 3 falls
    (1, [12.0, 11.5, 10.0], None),  # no warning: nothing to point at
    (0, [2.2, 2.0, 2.1], None),  # every candidate stands still: none did learn
])
def test_a_warned_selection_names_the_evaluated_sub_policy_that_did_learn(selected_index, improved, named):
    scores = {"selected": improved[selected_index], "raw": improved, "improved": improved,
              "selected_index": selected_index, "amq_selected_candidates": [50.0] * len(improved),
              "dataset_episodes": 35.6 if named is not None else 8.2, "selection_method": "amq"}
    text = " | ".join(score_warnings(scores))
    assert ("acts with it" in text) == (named is not None)
    if named is not None:
        assert f"sub_policy={named})" in text and f"scored {improved[named]:.1f}" in text


@pytest.mark.parametrize(("raw", "share", "hinted"), [
    ([2.0, 2.2, 1.9, 2.1], 0.025, True),  # HalfCheetah medium-replay at the default (RESULTS 0r)
    ([2.0, 2.2, 1.9, 2.1], 0.169, False),  # starts are common: the floor would add no row
    ([10.5, 2.2, 1.9, 2.1], 0.025, False),  # one sub-policy runs: not every sub-policy missed the gait
    ([2.0, 2.2, 1.9, 2.1], None, False),  # a run made before the share was recorded
    ([0.5, 0.2, 0.1, 0.3], 0.025, False),  # data near the random level (3.5 below): half of it says nothing
    ([2.0, 2.2, 1.9, 2.1], 0.025, "rows"),  # the floor was on (phase B drew start rows): nothing to suggest
])
def test_the_start_floor_is_suggested_where_every_sub_policy_misses_and_starts_are_rare(raw, share, hinted):
    scores = {"selected": raw[1], "raw": raw, "improved": raw, "selected_index": 1,
              "amq_selected_candidates": [50.0] * 4, "dataset_episodes": 8.2 if max(raw) > 1 else 3.5,
              "selection_method": "amq"}
    warnings = score_warnings(scores, start_share=share, start_rows=20.0 if hinted == "rows" else 0.0)
    hinted = hinted is True
    text = " | ".join(warnings)
    assert ("--pretrain.start_floor 0.1" in text) == hinted
    if hinted:
        assert "2.5 %" in text and len(warnings) == 2  # beside the selected policy's own warning


def test_a_run_passes_phase_bs_start_share_to_the_start_floor_hint():
    """The wiring in uepo.train: the hint needs phase B's recorded share, which the smoke run never triggers."""
    raw = [2.0, 2.2, 1.9, 2.1]
    scores = {"selected": raw[1], "raw": raw, "improved": raw, "selected_index": 1,
              "amq_selected_candidates": [50.0] * 4, "dataset_episodes": 8.2, "selection_method": "amq"}
    hinted = offline_warnings(scores, {"warnings": ["from phase D"]}, {"start_natural_share": 0.025}, {})
    assert hinted[0] == "from phase D" and "--pretrain.start_floor 0.1" in hinted[-1] and "2.5 %" in hinted[-1]
    assert not any("start_floor" in w for w in offline_warnings(scores, {}, {"start_natural_share": 0.169}, {}))


def test_select_sub_policy_takes_the_best_plausible():
    out = select_sub_policy([5.0, 9.0, 7.0], [True, False, True], [0.1, 0.2, 0.3])
    assert out["selected"] == 2 and out["method"] == "amq" and out["warnings"] == []


@pytest.fixture(scope="module")
def hopper_phases(shipped_hopper, tmp_path_factory):
    overrides = {"critics": {"steps": 1500, "batch_size": 256, "hidden": 64},
                 "pretrain": {"steps": 1500, "batch_size": 128, "width": 64, "num_blocks": 2, "lr": 1e-3,
                              "diffusion_steps": 20, "sampling_steps": 5, "kl_batch": 16, "kl_chain_steps": 3,
                              "tau_states": 256, "warmup_steps": 20, "seed_temperature": 0.3,
                              "num_seeds": 3},
                 "dynamics": {"ensemble": 4, "elites": 3, "hidden": 64, "max_epochs": 12, "max_updates_per_epoch": 40,
                              "batch_size": 256, "augmentation": False, "patience": 4}}
    return phases_abc(shipped_hopper, tmp_path_factory.mktemp("hopper"), **overrides)


def test_amq_ranks_sub_policies_as_the_real_env_does(hopper_phases):
    """Two sub-policies broken on purpose (their heads push every action to a bound): AM-Q must rank the
    intact one first, as real episodes do, and the selection regret measured in the env is 0."""
    ctx, critics, pre, dynamics = hopper_phases
    data, policy = ctx.data, copy.deepcopy(pre.policy)
    with torch.no_grad():
        policy.heads[1].mean_layer.bias.fill_(3.0)
        policy.heads[2].mean_layer.bias.fill_(-3.0)
    starts = data.histories(torch.arange(0, data.size, data.size // 64)[:64], policy.history)
    support = Support.of(data, dynamics, critics, 0.99, 0.1, DEFAULT_FACTOR)
    amq = [am_q(head_act_fn(policy, policy.heads[i], i), dynamics, critics, starts, 100, data.normalize,
                support) for i in range(3)]
    assert all(j.plausible for j in amq)
    values = [j.value for j in amq]
    real = [evaluate_policy(policy, data.env_spec, i, episodes=3, seed=7, ref_min_score=data.ref_min_score,
                            ref_max_score=data.ref_max_score)["score_mean"] for i in range(3)]
    assert real[0] > max(real[1:]) + 5, real  # the premise: the intact sub-policy is clearly better
    chosen = select_sub_policy(values, [True] * 3, [0.0] * 3)["selected"]
    assert chosen == 0, (values, real)
    report = selection_report(chosen, values, values, None, real)
    assert report["regret"] == 0 and report["amq_picks_best_improved"]


def test_amq_rows_make_up_j_and_pair_two_policies(hopper_phases):
    """Ĵ is the mean of its start states' values; a policy paired with itself is 0 standard errors apart,
    an intact sub-policy and one pushed to an action bound many."""
    ctx, critics, pre, dynamics = hopper_phases
    data, policy = ctx.data, copy.deepcopy(pre.policy)
    with torch.no_grad():
        policy.heads[1].mean_layer.bias.fill_(3.0)
    starts = data.histories(torch.arange(0, data.size, data.size // 64)[:64], policy.history)
    support = Support.of(data, dynamics, critics, 0.99, 0.1, DEFAULT_FACTOR)
    intact, broken = (am_q(head_act_fn(policy, policy.heads[i], i), dynamics, critics, starts, 100, data.normalize,
                           support) for i in (0, 1))
    assert intact.row_values.shape == (64,) and intact.row_values.dtype == torch.float64
    assert float(intact.row_values.mean()) == pytest.approx(intact.value, rel=1e-5)
    assert 0 < intact.standard_error < abs(intact.value)
    assert paired_z(intact.row_values, intact.row_values) == 0.0
    assert paired_z(intact.row_values, broken.row_values) > 3, (intact.value, broken.value)
    assert paired_z(broken.row_values, intact.row_values) < -3
    assert math.isnan(paired_z(intact.row_values, None))


def improve_with(phases, root, **improve_fields):
    """Phase D on the fixture's phases A–C with some ``improve`` fields changed, in a fresh run directory."""
    ctx, critics, pre, dynamics = phases
    cfg = copy.deepcopy(ctx.cfg)
    apply_overrides(cfg, {"improve": improve_fields})
    run = Run(root, tensorboard=False)
    return improve(PhaseContext(run, cfg, ctx.data, torch.device("cpu"), progress=False), pre.policy, critics, dynamics)


def test_accept_z_accepts_only_gains_beyond_amq_noise(hopper_phases, tmp_path):
    """With an unreachable margin no BPPO head is accepted (Ĵ stays the raw one); without it some are;
    either way the summary says how far the selected sub-policy is above the runner-up."""
    # selecting on the gate's own states (validate_states 0), so that Ĵ is the gate's: what this test is about
    free = improve_with(hopper_phases, tmp_path / "free", accept_z=0.0, validate_states=0)
    strict = improve_with(hopper_phases, tmp_path / "strict", accept_z=1e6, validate_states=0)
    assert free.amq_raw == strict.amq_raw
    assert any(b > r for b, r in zip(free.amq_best, free.amq_raw, strict=True))  # the premise: BPPO gains
    assert strict.amq_best == strict.amq_raw
    assert (free.selection["accept_z"], strict.selection["accept_z"]) == (0.0, 1e6)  # the margin it ran with
    for result in (free, strict):
        sel = result.selection
        assert all(se is not None and se > 0 for se in sel["amq_se"])
        assert sel["runner_up"] != result.selected and sel["runner_up_z"] is not None and sel["runner_up_z"] >= 0


def test_accept_z_default_is_by_policy_kind():
    """-1 (the default) is the gate for diffusion sub-policies and Uni-O4's any-gain rule for its Gaussian
    baseline; a value given is used as given, for either kind; a negative one other than -1 is refused."""
    assert preset("bench").improve.accept_z == -1
    for policy, margin in (("diffusion", 1.645), ("gaussian-ensemble", 0.0)):
        cfg = apply_overrides(preset("smoke"), {"policy": policy})
        validate(cfg)
        assert accept_z_of(cfg) == margin
        assert accept_z_of(apply_overrides(cfg, {"improve": {"accept_z": 0.5}})) == 0.5
    with pytest.raises(ValueError, match="accept_z must be a finite number >= 0 .* or -1"):
        validate(apply_overrides(preset("smoke"), {"improve": {"accept_z": -0.5}}))


@pytest.mark.parametrize(("policy", "expect"), [
    ("diffusion", (1.645, 0.1, 8.0, 1024)),  # RESULTS 0l–0n (the gate), 0r–0t (the floor, fresh selection)
    ("gaussian-ensemble", (0.0, 0.0, 1.0, 0)),  # Uni-O4's baseline keeps Uni-O4's recipe
])
def test_by_policy_fields_resolve_to_their_kinds_value_and_a_given_value_stays(policy, expect, tmp_path):
    cfg = apply_overrides(preset("bench"), {"policy": policy})
    validate(cfg)
    fields = lambda c: (c.improve.accept_z, c.pretrain.start_floor, c.pretrain.start_action_weight,  # noqa: E731
                        c.improve.validate_states)
    assert fields(cfg) == (-1, -1, -1, -1)  # config.yaml keeps -1
    assert fields(resolve_by_policy(cfg)) == expect
    assert fields(cfg) == (-1, -1, -1, -1)  # resolving copies
    ctx = PhaseContext(Run(tmp_path, tensorboard=False), cfg, None, torch.device("cpu"))
    assert fields(ctx.cfg) == expect  # what every phase reads
    given = apply_overrides(copy.deepcopy(cfg), {"pretrain": {"start_floor": 0.05, "start_action_weight": 2.0},
                                                 "improve": {"validate_states": 0, "accept_z": 0.5}})
    assert fields(resolve_by_policy(given)) == (0.5, 0.05, 2.0, 0)


@pytest.mark.parametrize(("override", "match"), [
    ({"improve": {"validate_states": -2}}, "validate_states must be >= 0 .* or -1"),
    ({"pretrain": {"start_floor": -0.5}}, "start_floor must be in \\[0, 1\\] .* or -1"),
    ({"pretrain": {"start_action_weight": -2.0}}, "start_action_weight must be > 0 or -1"),
])
def test_a_by_policy_field_refuses_negatives_other_than_minus_one(override, match):
    with pytest.raises(ValueError, match=match):
        validate(apply_overrides(preset("smoke"), override))


def test_fresh_amq_replaces_the_gates_values():
    """Every sub-policy's accepted head is scored once on the fresh states; its Ĵ, plausibility and rows
    become those, and the gate's come back for the record."""
    policy = MultiSeedPolicy(policy_config("diffusion", 11, 3, history=2, horizon=4, num_seeds=3, width=16,
                                           num_blocks=1, head_hidden=8, head_layers=1), torch.zeros(11), torch.ones(11))
    best = {"heads": [copy.deepcopy(h.state_dict()) for h in policy.heads], "amq": [5.0, 9.0, 9.0],
            "plausible": [True, True, False], "rows": [None] * 3}
    best["heads"][1]["mean_layer.bias"] = best["heads"][1]["mean_layer.bias"] + 0.5  # an accepted head
    calls = []

    def score(i: int, head) -> AmQ:  # fresh Ĵ: 10·i + the head's mean bias
        calls.append(i)
        value = 10.0 * i + float(head.mean_layer.bias.detach().sum()) / 3
        return AmQ(value, value, 1.0, 0.0, i != 0, row_values=torch.full((4,), value, dtype=torch.float64))

    gate = fresh_amq(policy, best, score)
    assert calls == [0, 1, 2]
    assert gate == {"amq": [5.0, 9.0, 9.0], "plausible": [True, True, False]}
    assert best["amq"] == pytest.approx([0.0, 10.5, 20.0])
    assert best["plausible"] == [False, True, True]
    assert float(best["rows"][1].mean()) == pytest.approx(10.5)


def test_selection_on_held_out_states(hopper_phases, tmp_path):
    """``validate_states``: the same BPPO heads as without it (the gate is untouched), and i* is the arg max
    of their Ĵ on start states the gate never saw; the gate's values are kept beside."""
    ctx, pre = hopper_phases[0], hopper_phases[2]
    gate = improve_with(hopper_phases, tmp_path / "gate", validate_states=0)
    held = improve_with(hopper_phases, tmp_path / "held-out", validate_states=24)
    record = held.selection["validation"]
    assert record["states"] == 24 and record["gate"]["amq"] == gate.amq_best
    assert held.amq_raw == gate.amq_raw
    for a, b in zip(gate.policy.heads, held.policy.heads, strict=True):
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert held.amq_best != gate.amq_best  # other states, other values
    # on this fixture the two arg maxes differ (1 on the gate's states, 2 on the fresh ones), so a selection
    # made on the gate's values fails here
    assert held.selected == max(range(len(held.amq_best)), key=held.amq_best.__getitem__)
    cfg = copy.deepcopy(ctx.cfg.improve)
    cfg.validate_states = 24
    starts = held_out_starts(ctx.data, cfg, 0, pre.policy.history)  # the run seed's own stream: reproducible
    assert starts.shape[0] == 24 and torch.equal(starts, held_out_starts(ctx.data, cfg, 0, pre.policy.history))
    assert not torch.equal(starts, held_out_starts(ctx.data, cfg, 1, pre.policy.history))


@pytest.mark.parametrize("env_id,robot,max_angle", [("Hopper-v5", "hopper", 0.35), ("Walker2d-v5", "walker2d", 1.5)])
def test_termination_functions_match_the_v5_envs(env_id, robot, max_angle):
    """On random states that cross every health bound, termination_fn(obs) == not env.is_healthy.
    (Hopper's |state| < 100 bound on velocities cannot be seen in observations, which clip them to ±10.)"""
    env = gym.make(env_id).unwrapped
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    fn = termination_fn(robot)
    obs, expected = [], []
    for _ in range(400):
        qpos = env.init_qpos + rng.normal(0, 0.3, env.model.nq)
        qpos[1] = rng.uniform(0.4, 2.4)  # height around every bound
        qpos[2] = rng.uniform(-max_angle, max_angle)  # torso angle around its bounds
        qvel = rng.normal(0, 2, env.model.nv)
        env.set_state(qpos, qvel)
        obs.append(env._get_obs())
        expected.append(not env.is_healthy)
    o = torch.as_tensor(np.stack(obs), dtype=torch.float32)
    got = fn(o, torch.zeros(len(obs), env.action_space.shape[0]), o)
    assert 0.2 < np.mean(expected) < 0.8  # both outcomes are well represented
    assert got.tolist() == expected


def test_rank_correlation_and_regret():
    assert rank_correlation([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert rank_correlation([1, 1, 2], [1, 2, 3]) == pytest.approx(np.corrcoef([0.5, 0.5, 2], [0, 1, 2])[0, 1])
    assert rank_correlation([1, 1], [1, 2]) is None
    r = selection_report(1, [0, 0, 0], [3, 2, 1], [10.0, 40.0, 5.0], [20.0, 30.0, 35.0])
    assert r["regret"] == pytest.approx(10.0) and r["regret_vs_improved"] == pytest.approx(5.0)
    assert r["regret_vs_raw"] == pytest.approx(10.0) and not r["amq_picks_best_improved"]
    assert r["regret_uniform"] == pytest.approx(40.0 - 85.0 / 3)  # best of the pool − mean of the improved
    assert r["amq_rank_correlation"] == pytest.approx(-1.0)
    assert "regret_floor" not in r  # only with per-episode scores


def test_regret_floor():
    # two candidates with paired episodes [0, 2] and [2, 0]: equal means, the first is the "perfect" pick; of
    # the 4 equally likely resamples only (0, 0) makes it measure worse, by 2, so the floor is 2/4
    assert regret_floor([[0.0, 2.0], [2.0, 0.0]], draws=40_000) == pytest.approx(0.5, abs=0.02)
    assert regret_floor([[5.0, 5.0, 5.0], [1.0, 4.0, 2.0]]) == 0.0  # no resample of the second reaches 5
    assert regret_floor([[5.0, 5.0, 5.0], [1.0, 9.0, 2.0]]) > 0.0  # (9, 9, 9) and the like do
    assert regret_floor([[3.0, 1.0, 2.0], [3.0, 1.0, 2.0]]) == 0.0  # the same policy twice (BPPO kept the raw head)
    noisy = [[10.0 + 8 * (-1) ** j for j in range(10)], [9.0 + 8 * (-1) ** (j // 2) for j in range(10)]]
    assert regret_floor(noisy) > 1.0  # 1 point apart with ±8 episode noise: 10 episodes cannot tell them apart
    assert regret_floor([[1.0, 2.0]]) is None and regret_floor([[1.0], [2.0]]) is None
    assert regret_floor([[1.0, 2.0], [1.0, 2.0, 3.0]]) is None
    assert regret_floor([[0.0, 2.0], [2.0, 0.0]], seed=3) == regret_floor([[0.0, 2.0], [2.0, 0.0]], seed=3)
    evaluation = {"raw": [{"scores": [0.0, 2.0]}], "improved": [{"scores": [2.0, 0.0]}]}
    assert evaluation_episode_scores(evaluation) == [[0.0, 2.0], [2.0, 0.0]]
    assert evaluation_episode_scores({"raw": [{"score_mean": 1.0}]}) is None
    r = selection_report(0, [0.0], [0.0], [1.0], [1.0], evaluation_episode_scores(evaluation))
    assert r["regret_floor"] == regret_floor([[0.0, 2.0], [2.0, 0.0]])


def test_first_action_weight_and_start_oversampling(tiny_hopper):
    eps = torch.zeros(2, 4, 3)
    eps_hat = torch.zeros(2, 4, 3)
    eps_hat[:, 0] = 1.0  # error on the first action only
    mask = torch.ones(2, 4, dtype=torch.bool)
    assert masked_mse(eps, eps_hat, mask) == pytest.approx(1 / 4)
    assert masked_mse(eps, eps_hat, mask, first_action_weight=5.0) == pytest.approx(5 / 8)
    data = load_offline_data(tiny_hopper)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(BatchSampler(data)(64, g1), torch.randint(0, data.size, (64,), generator=g2))
    idx = BatchSampler(data, start_fraction=0.5, start_steps=3)(64, torch.Generator().manual_seed(1))
    step_in_episode = idx - data.episode_start[idx]
    assert (step_in_episode[:32] < 3).all() and (step_in_episode < 3).float().mean() >= 0.5


def test_start_floor_tops_up_only_where_starts_are_rare(tiny_hopper):
    data = load_offline_data(tiny_hopper)
    natural = BatchSampler(data, start_steps=3).natural_share
    assert BatchSampler(data, start_steps=3, start_floor=natural / 2).extra_rows(64) == 0  # the data holds more
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(BatchSampler(data, start_steps=3, start_floor=natural / 2)(64, g1),
                       torch.randint(0, data.size, (64,), generator=g2))
    floor = min(0.9, natural + 0.3)
    sampler = BatchSampler(data, start_steps=3, start_floor=floor)
    k = sampler.extra_rows(4096)
    assert k / 4096 + (1 - k / 4096) * natural == pytest.approx(floor, abs=1e-3)
    idx = sampler(4096, torch.Generator().manual_seed(2))
    at_start = (idx - data.episode_start[idx]) < 3
    assert at_start[:k].all() and at_start.float().mean() == pytest.approx(floor, abs=0.03)
    # start_fraction keeps its meaning: that share whatever the data holds, the larger of the two wins
    assert BatchSampler(data, start_fraction=0.5, start_steps=3, start_floor=floor).extra_rows(64) == max(32, round(
        64 * (floor - natural) / (1 - natural)))


def test_executed_action_weight_per_row():
    target, prediction = torch.zeros(2, 4, 3), torch.zeros(2, 4, 3)
    prediction[:, 0] = 1.0  # error on the executed action only
    mask = torch.ones(2, 4, dtype=torch.bool)
    # row 0 weighs its executed action 5, row 1 weighs it 1: (5·3 + 1·3) / ((8 + 4)·3)
    assert masked_mse(target, prediction, mask, torch.tensor([5.0, 1.0])) == pytest.approx(0.5)
    assert masked_mse(target, prediction, mask, torch.tensor([2.0, 2.0])) == masked_mse(target, prediction, mask, 2.0)


def test_phase_b_weighs_the_executed_action_of_the_start_rows_only(tiny_hopper, tmp_path):
    """Phase B's trainer weighs the executed action of the rows drawn from episodes' starts, and its
    denoiser loss uses those weights (a weight of 1 is the plain loss, bit for bit)."""
    from uepo.phases.pretrain import PretrainTrainer, make_policy_config

    data = load_offline_data(tiny_hopper)

    def trainer(start_action_weight: float) -> PretrainTrainer:
        seed_everything(0)
        cfg = apply_overrides(preset("smoke"), {"pretrain": {
            "first_action_weight": 2.0, "start_action_weight": start_action_weight, "start_floor": 0.9,
            "start_steps": 3}})
        ctx = PhaseContext(Run(tmp_path / str(start_action_weight), tensorboard=False), cfg, data,
                           torch.device("cpu"), progress=False)
        return PretrainTrainer(ctx, make_policy_config(cfg, data.obs_dim, data.action_dim))

    weighted, plain = trainer(4.0), trainer(1.0)
    w, k = weighted._executed_action_weight(64), weighted.sample_batch.extra_rows(64)
    assert 0 < k < 64 and (w[:k] == 8.0).all() and (w[k:] == 2.0).all()
    assert plain._executed_action_weight(64) == 2.0  # every row alike: the plain number
    batch = weighted.sample_batch(64, torch.Generator().manual_seed(3))
    loss_weighted, loss_plain = weighted._denoiser_loss(batch)[0], plain._denoiser_loss(batch)[0]
    assert loss_weighted != loss_plain  # same net, rows and noise: only the start rows' weights differ


def test_seed_temperature_scales_the_initial_noise_only():
    from uepo.diffusion import SeedBank

    full = SeedBank.draw(3, 5, 4, 2, base_seed=7)
    cold = SeedBank.draw(3, 5, 4, 2, base_seed=7, temperature=0.25)
    assert torch.allclose(cold.noise, 0.25 * full.noise) and torch.equal(cold.perturb, full.perturb)
    with pytest.raises(ValueError, match="temperature"):
        SeedBank.draw(3, 5, 4, 2, base_seed=7, temperature=-1.0)


def test_amq_can_start_where_the_real_evaluation_starts(tiny_hopper, tmp_path):
    """improve.ope_start_fraction = 1: every AM-Q start state is an episode's first state (a reset state)."""
    ctx, critics, pre, dynamics = phases_abc(tiny_hopper, tmp_path, improve={"ope_start_fraction": 1.0})
    improve(ctx, pre.policy, critics, dynamics)
    ope_idx = ctx.run.load_checkpoint("improve_cache")["ope_idx"]
    assert torch.equal(ope_idx, ctx.data.episode_start[ope_idx])
