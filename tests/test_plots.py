"""Plots from a run directory's metrics.csv."""

from __future__ import annotations

import matplotlib.image as mpimg
import pytest

from uepo import plots
from uepo.runs import Run


def _fake_run(root, with_online=True):
    run = Run(root, tensorboard=False)
    for step in range(1, 6):
        run.log("critics", step * 100, q_loss=1.0 / step, v_loss=0.5 / step)
        run.log("improve", step * 10, amq_0=-0.1 + 0.01 * step, amq_1=-0.2 + 0.02 * step)
    run.log("dynamics", 0, T0_holdout_nll=-0.8, T_holdout_nll=-0.9, keep_rate=0.5)
    run.log("improve", 50, amq_best_0=-0.05, amq_best_1=-0.1, selected=0)
    if with_online:
        for step in (0, 512, 1024):
            run.log("online", step, eval_score=10.0 + step / 100, eval_return_std=5.0)
        run.log("online", 512, episode_score=9.0, policy_loss=0.01)
        run.log("online", 1024, episode_score=11.0, policy_loss=0.02)
        run.update_summary(online={"ref_scores": [-20.0, 3000.0]}, scores={"selected": 9.5},
                           dataset={"dataset_id": "local/hopper/medium-small-v0"})
    run.close()


def test_read_metrics_groups_by_phase_and_key(tmp_path):
    _fake_run(tmp_path)
    m = plots.read_metrics(tmp_path / "metrics.csv")
    assert set(m) == {"critics", "improve", "dynamics", "online"}
    assert m["critics"]["q_loss"][0] == (100, 1.0)
    assert [s for s, _ in m["online"]["eval_score"]] == [0, 512, 1024]
    assert [v for _, v in m["online"]["eval_score"]] == pytest.approx([10.0, 15.12, 20.24])


def test_make_plots_writes_one_figure_per_phase_and_the_learning_curve(tmp_path):
    _fake_run(tmp_path)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("1.0,online,2048,eval_sc")  # a row torn by a kill
    paths = plots.make_plots(tmp_path)
    names = sorted(p.name for p in paths)
    assert names == ["critics.png", "dynamics.png", "improve.png", "learning_curve.png", "online.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots"
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100


def test_no_learning_curve_without_online_evaluation(tmp_path):
    _fake_run(tmp_path, with_online=False)
    names = {p.name for p in plots.make_plots(tmp_path)}
    assert "learning_curve.png" not in names and "critics.png" in names


def test_clear_errors_for_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="run directory"):
        plots.make_plots(tmp_path / "nope")
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a uepo metrics file"):
        plots.make_plots(tmp_path)
    assert plots.main([str(tmp_path / "nope")]) == 2


def test_summary_json_is_optional(tmp_path):
    _fake_run(tmp_path)
    (tmp_path / "summary.json").unlink()
    assert any(p.name == "learning_curve.png" for p in plots.make_plots(tmp_path))


def test_compare_online_curves_table_and_figure(tmp_path):
    """--compare: each run's online eval_score as a column, steps where a run has none shown as —."""
    for name, points in (("a", [(0, 10.0), (100, 20.0)]), ("b", [(0, 5.0), (50, 7.0), (100, 6.0)])):
        run = tmp_path / name
        run.mkdir()
        rows = ["time,phase,step,key,value"] + [f"0,online,{s},eval_score,{v}" for s, v in points]
        (run / "metrics.csv").write_text("\n".join(rows + ["0,online,100,value_loss,1.0"]) + "\n")
    curves = plots.online_curves({"uepo": [tmp_path / "a"], "peer": [tmp_path / "b"]})
    table = plots.curves_table(curves).splitlines()
    assert table[0] == "| env steps | uepo | peer |"
    assert table[2:5] == ["| 0 | 10.0 | 5.0 |", "| 50 | — | 7.0 |", "| 100 | 20.0 | 6.0 |"]
    assert table[5] == "| **last** | 20.0 | 6.0 |" and table[6] == "| **best** | 20.0 | 7.0 |"
    out = tmp_path / "c.png"
    assert plots.main(["--compare", f"uepo={tmp_path / 'a'}", f"peer={tmp_path / 'b'}", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_compare_groups_seeds_into_mean_and_std(tmp_path):
    """Runs joined by commas are seeds of one label: cells are mean ± sample std, last/best are the
    mean over seeds of each seed's last and best; a kept eval_curve.csv stands in for metrics.csv."""
    for name, scores in (("s0", [10.0, 30.0, 20.0]), ("s1", [20.0, 10.0, 40.0])):
        run = tmp_path / name
        run.mkdir()
        (run / "eval_curve.csv").write_text("step,eval_score\n" + "".join(
            f"{step},{v}\n" for step, v in zip((0, 50, 100), scores, strict=True)))
    table = plots.curves_table(plots.online_curves({"uepo": [tmp_path / "s0", tmp_path / "s1"]})).splitlines()
    assert table[0] == "| env steps | uepo (2 seeds) |"
    assert table[2] == "| 0 | 15.0 ± 7.1 |" and table[3] == "| 50 | 20.0 ± 14.1 |"
    assert table[5] == "| **last** | 30.0 ± 14.1 |"    # 20 and 40
    assert table[6] == "| **best** | 35.0 ± 7.1 |"     # 30 and 40
    per_run = plots.runs_table({"uepo": [tmp_path / "s0", tmp_path / "s1"]},
                               plots.online_curves({"uepo": [tmp_path / "s0", tmp_path / "s1"]})).splitlines()
    assert per_run[2] == "| uepo | s0 | 10.0 | **20.0** | 30.0 | +10.0 (+100%) |"
    assert per_run[3] == "| uepo | s1 | 20.0 | **40.0** | 40.0 | +20.0 (+100%) |"
    assert per_run[4] == ("| uepo | mean of 2 | 15.0 ± 7.1 | **30.0 ± 14.1** | 35.0 ± 7.1 | 15.0 ± 7.1 "
                          "(2 of 2 above the start) |")
    out = tmp_path / "band.png"
    assert plots.main(["--compare", f"uepo={tmp_path / 's0'},{tmp_path / 's1'}", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_compare_refuses_seeds_evaluated_at_different_steps(tmp_path):
    for name, step in (("a", 50), ("b", 60)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "eval_curve.csv").write_text(f"step,eval_score\n0,1.0\n{step},2.0\n")
    with pytest.raises(ValueError, match="different env steps"):
        plots.curves_table(plots.online_curves({"x": [tmp_path / "a", tmp_path / "b"]}))
    assert plots.main(["--compare", f"x={tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(tmp_path / "c.png")]) == 2
