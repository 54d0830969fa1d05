"""python -m uepo.train end to end (phases A–D + evaluation) on a tiny dataset made by the tests."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from uepo.phases.improve import gain_penalized
from uepo.policy import MultiSeedPolicy
from uepo.train import main

torch.set_num_threads(1)


def smoke(tiny_hopper, run_dir, *extra):
    args = ["--dataset", tiny_hopper, "--preset", "smoke", "--seed", "3", "--run_dir", str(run_dir)]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def smoke_run(tiny_hopper, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    assert smoke(tiny_hopper, run_dir) == 0
    return run_dir


def test_run_directory_layout(smoke_run, tiny_hopper):
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/offline.pt",
                 "checkpoints/latest.pt"):
        assert (smoke_run / name).exists(), name
    assert list(smoke_run.glob("events.out.tfevents.*"))
    plots = {p.name for p in (smoke_run / "plots").glob("*.png")}
    assert {"critics.png", "pretrain.png", "dynamics.png", "improve.png"} <= plots
    cfg = yaml.safe_load((smoke_run / "config.yaml").read_text())
    assert cfg["dataset"] == tiny_hopper and cfg["preset"] == "smoke" and cfg["seed"] == 3
    phases = {row["phase"] for row in csv.DictReader(open(smoke_run / "metrics.csv"))}
    assert {"critics", "pretrain", "dynamics", "improve", "online"} <= phases
    assert (smoke_run / "checkpoints" / "online.pt").exists()
    assert {p.name for p in (smoke_run / "plots").glob("*.png")} >= {"critics.png", "learning_curve.png"}


def test_summary_has_scores_timings_and_provenance(smoke_run, tiny_hopper):
    s = json.loads((smoke_run / "summary.json").read_text())
    assert set(s["timings_s"]) >= {"A_critics", "B_pretrain", "C_dynamics", "D_improve", "evaluation"}
    assert len(s["phases_run"]) == 6 and s["phases_not_run"] == [] and "online" in s["phases_run"][-1]
    assert set(s["timings_s"]) >= {"online"} and s["online"]["env_steps"] > 0
    prov = s["provenance"]
    assert prov["kernel_backend"] in ("cpu", "cuda", "reference") and prov["torch"] == torch.__version__
    assert prov["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and prov["cpu"]  # what bit-exactness needs
    assert s["dataset"]["dataset_id"] == tiny_hopper and len(s["dataset"]["content_sha256"]) == 64
    scores = s["scores"]
    assert len(scores["raw"]) == 4 and scores["selected"] is not None and "not comparable" in scores["label"]
    assert len(scores["improved"]) == 4 and scores["selected"] == scores["improved"][scores["selected_index"]]
    report = scores["selection_report"]
    assert report["regret"] == pytest.approx(max(scores["raw"] + scores["improved"]) - scores["selected"])
    assert report["regret"] >= 0 and "amq_rank_correlation" in report and scores["selection_method"] == "amq"
    assert report["regret_floor"] is None  # one evaluation episode per policy (smoke): nothing to resample
    assert scores["nearest_divergence"] > 0
    # 40 steps of pretraining do not make a hopper hop: the run says its policies are at a random policy's level
    # (and nothing else: no T̂ or AM-Q warning)
    assert scores["selected"] < 2 and max(scores["raw"]) < 2
    assert len(s["warnings"]) == 2 and f"scores {scores['selected']:.1f} in the real env" in s["warnings"][0]
    assert "every raw sub-policy" in s["warnings"][1]
    for key in ("T0_holdout_nll", "T_holdout_nll", "keep_rate"):
        assert key in s["dynamics"]


def test_offline_artefact_follows_the_contract(smoke_run):
    bundle = torch.load(smoke_run / "checkpoints" / "offline.pt", weights_only=False)
    assert {"policy", "selected", "value", "dataset", "env_id"} <= set(bundle)
    assert bundle["env_id"] == "Hopper-v5"
    policy = MultiSeedPolicy.from_state(bundle["policy"])
    assert 0 <= bundle["selected"] < policy.num_seeds
    hist = torch.zeros(2, policy.history, policy.obs_dim)
    assert policy.act(hist, bundle["selected"]).shape == (2, 3)
    assert "state_dict" in bundle["value"] and "config" in bundle["value"]


def test_same_seed_same_result(smoke_run, tiny_hopper, tmp_path):
    assert smoke(tiny_hopper, tmp_path / "again") == 0
    a = torch.load(smoke_run / "checkpoints" / "offline.pt", weights_only=False)
    b = torch.load(tmp_path / "again" / "checkpoints" / "offline.pt", weights_only=False)
    for k, v in a["policy"]["state_dict"].items():
        assert torch.equal(v, b["policy"]["state_dict"][k]), k
    assert a["selected"] == b["selected"]


def test_resume_of_a_finished_run_loads_phases_and_refuses_other_configs(smoke_run, tiny_hopper, capsys):
    assert smoke(tiny_hopper, smoke_run) == 2  # not without --resume
    assert "--resume" in capsys.readouterr().err
    assert smoke(tiny_hopper, smoke_run, "--resume", "--critics.expectile", "0.9") == 2
    assert "different config" in capsys.readouterr().err
    assert smoke(tiny_hopper, smoke_run, "--resume") == 0  # every phase loads from its checkpoint
    assert "ran A critics" in capsys.readouterr().err


def test_uni_o4_gaussian_ensemble_and_ablations(tiny_hopper, tmp_path):
    assert smoke(tiny_hopper, tmp_path / "g", "--policy", "gaussian-ensemble", "--no-augmentation",
                 "--seq_kl_form", "data", "--improve.eval_raw", "false") == 0
    s = json.loads((tmp_path / "g" / "summary.json").read_text())
    assert s["policy"] == "gaussian-ensemble" and "T_holdout_nll" not in s["dynamics"]
    assert smoke(tiny_hopper, tmp_path / "u", "--denoiser", "unet", "--no-divergence", "--no-seq-kl",
                 "--sampler", "ddpm", "--improve.eval_episodes", "0") == 0
    policy = MultiSeedPolicy.load(tmp_path / "u" / "checkpoints" / "offline.pt")
    assert policy.config["denoiser"] == "unet" and policy.tau == 0.0 and policy.eta == 0.0
    assert policy.sampler == "ddpm"
    assert smoke(tiny_hopper, tmp_path / "d", "--seq_kl_form", "data", "--improve.eval_episodes", "0") == 0
    rows = [r for r in csv.DictReader(open(tmp_path / "d" / "metrics.csv")) if r["key"] == "seq_kl"]
    assert rows and all(math.isfinite(float(r["value"])) for r in rows)


def test_clear_errors_and_help(minari_root, tmp_path, capsys):
    assert main(["--dataset", "test/nothing/here-v0", "--preset", "smoke", "--run_dir", str(tmp_path)]) == 2
    assert "MINARI_DATASETS_PATH" in capsys.readouterr().err
    assert main(["--preset", "huge"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    for bad, says in ((["--selection", "oracle"], "--selection"), (["--seed_temperature", "-1"], "--seed_temperature"),
                      (["--start_fraction", "2"], "--start_fraction"), (["--start_floor", "-0.1"], "--start_floor"),
                      (["--start_action_weight", "0"], "--start_action_weight"), (["--ope_support_factor", "0"],
                                                                         "--ope_support_factor"),
                      (["--device", "cuda"], "--device 'cuda'"), (["--device", "gpu0"], "not a torch device")):
        assert main(["--preset", "smoke", *bad]) == 2
        assert says in capsys.readouterr().err, bad
    out = subprocess.run([sys.executable, "-m", "uepo.train", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for flag in ("--dataset", "--preset", "--no-divergence", "--no-seq-kl", "--no-augmentation", "--denoiser",
                 "--policy", "--download", "--online.clip", "--pretrain.alpha", "--expectile"):
        assert flag in out, flag


def test_phases_offline_then_online_with_resume_run_dir(tiny_hopper, tmp_path, capsys):
    run_dir = tmp_path / "split"
    assert smoke(tiny_hopper, run_dir, "--phases", "offline") == 0
    assert not (run_dir / "checkpoints" / "online.pt").exists()
    assert main(["--phases", "online", "--dataset", tiny_hopper, "--preset", "smoke", "--seed", "3"]) == 2
    assert "--resume RUN_DIR" in capsys.readouterr().err
    assert main(["--phases", "online", "--resume", str(run_dir), "--dataset", tiny_hopper,
                 "--preset", "smoke", "--seed", "3"]) == 0
    s = json.loads((run_dir / "summary.json").read_text())
    assert len(s["phases_run"]) == 6 and s["online"]["score_final"] is not None


@pytest.mark.parametrize("flags, reused, timings", [
    (["--no-augmentation"], ["critics", "pretrain", "dynamics_T0"], {"A_critics", "B_pretrain"}),
    (["--no-divergence"], ["critics", "dynamics_T0"], {"A_critics"}),
    (["--online.anneal_lr", "true"], ["critics", "pretrain", "dynamics", "improve"],
     {"A_critics", "B_pretrain", "C_dynamics", "D_improve"}),
])
def test_reuse_from_equals_training_again(smoke_run, tiny_hopper, tmp_path, flags, reused, timings):
    """An ablation started from the main run's phases ends exactly where training them again does."""
    ablation = (*flags, "--phases", "offline")
    assert smoke(tiny_hopper, tmp_path / "reused", *ablation, "--reuse_from", str(smoke_run)) == 0
    assert smoke(tiny_hopper, tmp_path / "fresh", *ablation) == 0
    s = json.loads((tmp_path / "reused" / "summary.json").read_text())
    assert s["reused"]["checkpoints"] == reused
    assert set(s["reused"]["timings_s"]) == timings
    a = torch.load(tmp_path / "reused" / "checkpoints" / "offline.pt", weights_only=False)
    b = torch.load(tmp_path / "fresh" / "checkpoints" / "offline.pt", weights_only=False)
    for k, v in a["policy"]["state_dict"].items():
        assert torch.equal(v, b["policy"]["state_dict"][k]), k
    assert a["selected"] == b["selected"]

    def rows(run):  # metrics.csv without the time column
        return [r[1:] for r in csv.reader(open(tmp_path / run / "metrics.csv"))]
    assert sorted(rows("reused")) == sorted(rows("fresh"))


def test_reuse_from_copies_only_phases_whose_inputs_match(smoke_run, tiny_hopper):
    from uepo.cli import parse_args
    from uepo.reuse import reusable_phases

    def reusable(*flags):
        cfg = parse_args(["--dataset", tiny_hopper, "--preset", "smoke", "--seed", "3", *flags])
        return [e.checkpoint for e in reusable_phases(cfg, smoke_run, None)]

    assert reusable() == ["critics", "pretrain", "dynamics_T0", "dynamics", "improve"]
    assert reusable("--online.clip", "0.3") == ["critics", "pretrain", "dynamics_T0", "dynamics", "improve"]
    assert reusable("--critics.steps", "30") == ["pretrain", "dynamics_T0", "dynamics"]
    assert reusable("--no-divergence") == ["critics", "dynamics_T0"]  # C reads B through the augmentation
    assert reusable("--policy", "gaussian-ensemble") == ["critics", "dynamics_T0"]
    assert reusable("--dynamics.augment_ratio", "0.3") == ["critics", "pretrain", "dynamics_T0"]
    assert reusable("--improve.steps", "7") == ["critics", "pretrain", "dynamics_T0", "dynamics"]
    assert reusable("--seed", "4") == []
    assert reusable("--dataset", tiny_hopper, "--seed", "3", "--no-augmentation") == \
        ["critics", "pretrain", "dynamics_T0"]
    with pytest.raises(FileNotFoundError, match="--reuse_from"):
        reusable_phases(parse_args(["--preset", "smoke"]), smoke_run / "nowhere", None)


def test_resume_accepts_a_run_from_before_a_field_existed(smoke_run, tiny_hopper, tmp_path):
    """A config field added after a run started, left at its default, does not block --resume."""
    import shutil

    from uepo.cli import parse_args
    from uepo.train import check_resume

    old = tmp_path / "old"
    shutil.copytree(smoke_run, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    del saved["reuse_from"]
    del saved["dynamics"]["augment_batch"]  # the same inside a section
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    flags = ["--dataset", tiny_hopper, "--preset", "smoke", "--seed", "3", "--resume", str(old)]
    check_resume(parse_args(flags), old)
    with pytest.raises(ValueError, match="reuse_from"):
        check_resume(parse_args([*flags, "--reuse_from", "elsewhere"]), old)
    with pytest.raises(ValueError, match="dynamics.augment_batch"):
        check_resume(parse_args([*flags, "--augment_batch", "7"]), old)


def test_a_run_from_before_the_by_policy_defaults_resumes_and_is_reused_with_what_it_ran_with(smoke_run, tiny_hopper,
                                                                                             tmp_path):
    """A config.yaml without start_floor, start_action_weight or validate_states ran without them (PREDATED):
    --resume reads that, not -1 (for diffusion: the floor and 1024 fresh states), and --reuse_from compares
    by-policy fields resolved: such a diffusion run's phase B is not today's default's, a Gaussian one's is."""
    import shutil

    from uepo.cli import parse_args, run_config
    from uepo.config import PREDATED
    from uepo.reuse import reusable_phases
    from uepo.train import check_resume

    old = tmp_path / "old"
    shutil.copytree(smoke_run, old)
    saved = yaml.safe_load((old / "config.yaml").read_text())
    for section, name in PREDATED:
        del saved[section][name]
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = run_config(old)
    assert (cfg.pretrain.start_floor, cfg.pretrain.start_action_weight, cfg.improve.validate_states) == (0.0, 1.0, 0)
    check_resume(parse_args(["--resume", str(old)]), old)
    today = ["--dataset", tiny_hopper, "--preset", "smoke", "--seed", "3"]
    assert [e.checkpoint for e in reusable_phases(parse_args(today), old, None)] == ["critics", "dynamics_T0"]
    saved["policy"] = "gaussian-ensemble"
    (old / "config.yaml").write_text(yaml.safe_dump(saved))
    gaussian = parse_args([*today, "--policy", "gaussian-ensemble"])
    assert "pretrain" in [e.checkpoint for e in reusable_phases(gaussian, old, None)]


def test_topk_online_selection_is_a_flagged_option_and_the_run_prints_its_selection_table(tiny_hopper, tmp_path,
                                                                                           capsys):
    assert smoke(tiny_hopper, tmp_path / "k", "--selection", "amq-topk-online", "--select_topk", "2",
                 "--phases", "offline") == 0
    err = capsys.readouterr().err
    assert "dataset own episodes" in err and "regret" in err and "(amq-topk-online)" in err
    s = json.loads((tmp_path / "k" / "summary.json").read_text())
    sel = s["selection"]
    assert sel["method"] == "amq-topk-online" and len(sel["candidates"]) == 2 and "peeks" in sel["note"]
    assert sel["selected"] in sel["candidates"] and s["scores"]["selection_method"] == "amq-topk-online"
    ranked = sorted(range(4), key=lambda i: -s["scores"]["amq_selected_candidates"][i])
    assert sel["candidates"] == ranked[:2]
    # scripts/reselect.py --topk replays the same pick from the finished run (the matrix's numbers in RESULTS 0e)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from reselect import reselect_online

    replay = reselect_online(tmp_path / "k", 2, 3, with_raw=False)
    assert replay["shortlist"] == sel["candidates"] and replay["pick"] == sel["selected"]
    assert replay["returns"] == pytest.approx(sel["candidate_returns"], rel=0, abs=0)


def test_gain_penalized_ranking_is_raw_minus_p_times_the_gain_and_needs_both_plausible():
    raw_rows = [torch.tensor([1.0, 3.0], dtype=torch.float64), None, torch.tensor([0.0, 2.0], dtype=torch.float64)]
    best = {"amq": [4.0, 5.0, 3.0], "plausible": [True, True, False],
            "rows": [torch.tensor([5.0, 3.0], dtype=torch.float64), torch.tensor([5.0, 5.0], dtype=torch.float64),
                     torch.tensor([3.0, 3.0], dtype=torch.float64)]}
    ranking, ok, rows = gain_penalized([2.0, 5.0, 1.0], [True, True, True], raw_rows, best, 1.0, paired=True)
    assert ranking == [0.0, 5.0, -1.0] and ok == [True, True, False]
    assert rows[0].tolist() == [-3.0, 3.0] and rows[1] is None and rows[0].mean().item() == ranking[0]
    plain, _, _ = gain_penalized([2.0, 5.0, 1.0], [True, False, True], raw_rows, best, -1.0, paired=False)
    assert plain == best["amq"]  # p = -1 is AM-Q itself


def test_gain_penalty_selection_picks_by_the_penalised_ranking_and_the_replay_agrees(smoke_run, tiny_hopper, tmp_path,
                                                                                    capsys):
    run = tmp_path / "g"
    assert smoke(tiny_hopper, run, "--reuse_from", str(smoke_run), "--selection", "amq-gain-penalty",
                 "--phases", "offline") == 0
    assert "ranked by Ĵ_raw − 1·(Ĵ − Ĵ_raw)" in capsys.readouterr().err
    s, base = (json.loads((r / "summary.json").read_text()) for r in (run, smoke_run))
    sc, sel = s["scores"], s["selection"]
    # phase D's gate does not read --selection: the same heads, Ĵ and real scores as the AM-Q run
    assert sc["amq_selected_candidates"] == base["scores"]["amq_selected_candidates"]
    assert sc["improved"] == base["scores"]["improved"] and sc["raw"] == base["scores"]["raw"]
    expected = [r - (b - r) for r, b in zip(sc["amq_raw"], sc["amq_selected_candidates"], strict=True)]
    assert sel["ranking"] == pytest.approx(expected, rel=0, abs=1e-9) and sc["selection_method"] == "amq-gain-penalty"
    ok = [a and b for a, b in zip(sel["amq_raw_plausible"], sel["amq_plausible"], strict=True)]
    assert sel["selected"] == max((i for i in range(4) if ok[i]), key=lambda i: expected[i])
    # the regret is measured on real-env scores, and scripts/reselect.py replays the pick from the AM-Q run alone
    assert sc["selected"] == sc["improved"][sel["selected"]]
    assert sc["selection_report"]["regret"] == pytest.approx(max(sc["raw"] + sc["improved"]) - sc["selected"])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from reselect import reselect_gain_penalty

    replay = reselect_gain_penalty(smoke_run, 1.0)
    assert replay["pick"] == sel["selected"] and replay["regret"] == pytest.approx(sc["selection_report"]["regret"])


def test_t0_view_gives_the_model_fitted_on_real_data_and_leaves_the_run_as_it_was(smoke_run, tmp_path):
    # scripts/reselect.py --t0_views (RESULTS 0u): the selection replayed on T̂0 instead of T̂
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from ope_probe import load_finished_run

    before = {p: p.stat().st_mtime_ns for p in smoke_run.rglob("*")}
    on_t, on_t0 = load_finished_run(smoke_run), load_finished_run(smoke_run, tmp_path / "view")
    assert "T_holdout_error" in on_t.dynamics.metrics and "T_holdout_error" not in on_t0.dynamics.metrics
    assert on_t0.dynamics.metrics["T0_holdout_error"] == on_t.dynamics.metrics["T0_holdout_error"]
    differs = [not torch.equal(a, b) for a, b in zip(on_t.dynamics.model.state_dict().values(),
                                                     on_t0.dynamics.model.state_dict().values(), strict=True)]
    assert any(differs)
    # the rest of the run is the run's own: the same raw and improved policies, scores and critics
    assert on_t0.real == on_t.real and on_t0.scores == on_t.scores
    hist = on_t.data.histories(torch.arange(7), on_t.policy.history)
    assert all(torch.equal(a(hist), b(hist)) for a, b in zip(on_t.acts, on_t0.acts, strict=True))
    assert {p: p.stat().st_mtime_ns for p in smoke_run.rglob("*")} == before  # the view wrote nothing into the run


def test_the_probes_refuse_a_run_that_has_not_finished_and_write_nothing_into_it(smoke_run, tmp_path):
    # load_finished_run's phases train what a run lacks, into the run's directory: a probe must not (stop 41)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from ope_probe import load_finished_run

    run = tmp_path / "unfinished"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_bytes((smoke_run / "config.yaml").read_bytes())
    (run / "checkpoints" / "critics.pt").write_bytes((smoke_run / "checkpoints" / "critics.pt").read_bytes())
    summary = json.loads((smoke_run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({k: v for k, v in summary.items() if k != "scores"}))
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(SystemExit, match="not a finished run.*--resume"):
        load_finished_run(run)
    (run / "summary.json").write_text(json.dumps(summary))  # scored, but the phase-B checkpoint is missing
    with pytest.raises(SystemExit, match="pretrain"):
        load_finished_run(run)
    assert sorted(p.name for p in run.rglob("*")) == before
