"""python -m uepo.sweep: two tiny runs on a local Ray, skipped when run again, then the table, CSV and plot;
the job model's resume/reuse/skip decisions; and the install hint when Ray is missing."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import statistics
import subprocess
import sys

import pytest

from uepo import sweep
from uepo.matrix import Job

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='Ray is the sweep extra: pip install -c constraints.txt -e ".[sweep]"')


def sweep_command(action: str, out, dataset: str, *more: str) -> list[str]:
    """The command the README shows, on the tiny dataset with the CI preset."""
    return [sys.executable, "-m", "uepo.sweep", action, "--datasets", dataset, "--seeds", "0", "1",
            "--variants", "main", "--preset", "smoke", "--out", str(out), *more]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")  # MINARI_DATASETS_PATH: set by the minari_root fixture
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


@needs_ray
def test_a_sweep_of_two_runs_on_a_local_ray(tiny_hopper, tmp_path):
    first = run(sweep_command("run", tmp_path, tiny_hopper, "--max_parallel", "2"))
    jobs = [Job(tiny_hopper, seed, "main", tmp_path, "smoke") for seed in (0, 1)]
    assert all(job.finished() for job in jobs), first.stdout
    lines = first.stdout.splitlines()
    assert "0 of 2 runs already finished (skipped), 2 to run" in first.stdout
    events = [line.split("] ")[1].split()[0] for line in lines if line.startswith("[") and "] " in line]
    assert events[1:] == ["start", "start", "done", "done"]  # both in flight at once, both ended finished
    for job in jobs:
        assert "--threads 1" in first.stdout and job.log_path.read_text().strip()

    scores = [job.summary()["scores"]["selected"] for job in jobs]
    row = next(line for line in lines if line.startswith(f"| {tiny_hopper} | main | 2 |"))
    assert f"| {statistics.mean(scores):.1f} ± {statistics.stdev(scores):.1f} |" in row
    with open(tmp_path / "sweep.csv", newline="") as f:
        (record,) = list(csv.DictReader(f))
    assert record["dataset"] == tiny_hopper and record["variant"] == "main" and record["seeds"] == "2"
    assert float(record["selected_mean"]) == pytest.approx(statistics.mean(scores))
    assert float(record["selected_std"]) == pytest.approx(statistics.stdev(scores))
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"table: {tmp_path / 'sweep.csv'}" in first.stdout and f"plot: {tmp_path / 'sweep.png'}" in first.stdout

    stamps = [(job.run_dir / "summary.json").stat().st_mtime_ns for job in jobs]
    second = run(sweep_command("run", tmp_path, tiny_hopper, "--max_parallel", "2"))
    assert "2 of 2 runs already finished (skipped), 0 to run" in second.stdout and " start " not in second.stdout
    assert [(job.run_dir / "summary.json").stat().st_mtime_ns for job in jobs] == stamps

    kept = tmp_path / "kept"  # what docs/results/ keeps of a matrix
    tables = run(sweep_command("report", tmp_path, tiny_hopper, "--collect", str(kept)))
    for job in jobs:
        copy = kept / tiny_hopper / f"{job.run_dir.name}-summary.json"
        assert copy.read_bytes() == (job.run_dir / "summary.json").read_bytes()
        assert (kept / tiny_hopper / f"{job.run_dir.name}-config.yaml").exists()
    assert f"### {tiny_hopper}" in tables.stdout and "| **selected (UEPO)** |" in tables.stdout
    assert f"| {statistics.mean(scores):.1f} ± {statistics.stdev(scores):.1f} |" in tables.stdout
    assert "table: " in tables.stderr and "table: " not in tables.stdout  # stdout stays the tables alone


def test_run_without_ray_says_how_to_install_it_and_report_still_works(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets where Ray is not installed
    assert sweep.main(["run", "--out", str(tmp_path / "runs")]) == 2
    assert 'pip install "uepo[sweep]"' in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing was started
    assert sweep.main(["report", "--out", str(tmp_path / "runs")]) == 0
    assert "### Targets" in capsys.readouterr().out


def test_jobs_resume_with_their_own_config_reuse_their_main_run_and_skip_when_finished(tmp_path):
    main, variant = (Job("test/x/y-v0", 0, v, tmp_path, "smoke", threads=2, extra=("--critics.steps", "5"))
                     for v in ("main", "no-seq-kl"))
    fresh = main.command()
    assert fresh[fresh.index("--threads") + 1] == "2" and "--critics.steps" in fresh
    assert "--resume" not in fresh and "--reuse_from" not in fresh
    assert variant.command()[-2:] == ["--reuse_from", str(main.run_dir)] and not variant.ready()

    main.run_dir.mkdir(parents=True)
    (main.run_dir / "config.yaml").write_text("seed: 0\n")  # a run that started and stopped
    resumed = main.command()
    assert resumed[-1] == "--resume" and "--threads" not in resumed  # a resume must not change the config
    (main.run_dir / "summary.json").write_text(json.dumps({"scores": {"selected": 1.0},
                                                           "phases_not_run": ["E online fine-tuning"]}))
    assert main.finished() and variant.ready()
    assert not dataclasses.replace(main, phases="all").finished()  # phase E still to run

    (main.run_dir / "RUNNING").write_text(f"{os.getpid()} {os.uname().nodename}")
    assert main.running_elsewhere()
    (main.run_dir / "RUNNING").write_text(f"{os.getpid()} some-other-node")  # cannot be checked from here
    assert not main.running_elsewhere()


def test_train_flags_after_the_separator_go_to_every_run_but_not_those_the_sweep_sets(tmp_path, capsys):
    args, extra = sweep.parse(["run", "--datasets", "test/x/y-v0", "--seeds", "4", "--variants", "main",
                               "--out", str(tmp_path), "--", "--pretrain.steps", "9"])
    (job,) = sweep.jobs_of(args, extra)
    assert extra == ["--pretrain.steps", "9"] and job.command()[-4:-2] == ["--pretrain.steps", "9"]
    assert job.out == tmp_path.resolve() and job.seed == 4
    with pytest.raises(SystemExit):
        sweep.parse(["run", "--", "--seed=3"])
    assert "--seed" in capsys.readouterr().err


def test_the_uni_o4_selection_variant_reruns_only_phase_d_and_is_not_a_default(tmp_path):
    """amq-topk-online: the main run's A–C are reused (--reuse_from) and D runs with Uni-O4's selection;
    a sweep runs it only when asked (the offline selection stays the method's)."""
    args, extra = sweep.parse(["run", "--datasets", "test/x/y-v0", "--seeds", "0", "--variants", "amq-topk-online",
                               "--out", str(tmp_path)])
    (job,) = [j for j in sweep.jobs_of(args, extra) if j.variant == "amq-topk-online"]  # (its main run too)
    cmd = job.command()
    assert cmd[cmd.index("--selection") + 1] == "amq-topk-online"
    assert cmd[cmd.index("--reuse_from") + 1] == str(job.main_dir) and not job.ready()
    default, _ = sweep.parse(["run", "--datasets", "test/x/y-v0", "--out", str(tmp_path)])
    assert "amq-topk-online" not in default.variants and "main" in default.variants


def test_report_of_runs_gathered_from_two_sweeps_where_only_some_seeds_reused_phases(tmp_path):
    from uepo.matrix import report

    def finished(seed: int, variant: str, reused: dict) -> Job:
        job = Job("local/hopper/medium-v0", seed, variant, tmp_path, "bench")
        job.run_dir.mkdir(parents=True)
        scores = {"selected": 20.0 + seed, "selected_index": 0, "raw": [10.0, 12.0], "improved": [20.0 + seed, 5.0],
                  "dataset_episodes": 29.2, "selection_report": {"regret": 0.0, "amq_picks_best_improved": True}}
        summary = {"scores": scores, "timings_s": {"B_pretrain": 300.0 + seed}, **reused}
        (job.run_dir / "summary.json").write_text(json.dumps(summary))
        return job

    seed0 = finished(0, "gaussian-ensemble", {"reused": {"from": str(tmp_path / "gone"), "checkpoints": ["dynamics_T0"],
                                                         "timings_s": {"A_critics": 400.0}}})
    seed1 = finished(1, "gaussian-ensemble", {})  # the same variant from an earlier sweep that reused nothing
    table = report([seed0, seed1])
    assert "| selected, gaussian-ensemble | 20.0 | 21.0 | 20.5 ± 0.7 |" in table
    assert "| gaussian-ensemble | 2 |" in table.split("Wall time per phase")[1]


def load_compare_matrices():
    """scripts/compare_matrices.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "compare_matrices", os.path.join(os.path.dirname(__file__), os.pardir, "scripts", "compare_matrices.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_matrices_pairs_runs_by_dataset_variant_seed(tmp_path):
    """scripts/compare_matrices.py: a run in one side only is left out; means and paired differences by hand."""
    compare_matrices = load_compare_matrices()

    def record(seed: int, selected: float, regret: float, improved: list[float]) -> dict:
        return {"dataset": "d", "variant": "main", "seed": seed, "raw": [1.0, 3.0], "improved": improved,
                "selected": selected, "regret": regret}

    base = tmp_path / "base.json"
    new = tmp_path / "new.json"
    base.write_text(json.dumps({"runs": [record(0, 10.0, 4.0, [2.0, 4.0]), record(1, 20.0, 2.0, [6.0, 6.0]),
                                         record(2, 99.0, 0.0, [0.0, 0.0])]}))
    new.write_text(json.dumps({"runs": [record(0, 13.0, 1.0, [3.0, 3.0]), record(1, 21.0, 0.0, [6.0, 8.0])]}))
    rows = compare_matrices.compare(compare_matrices.load([base]), compare_matrices.load([new]))
    pooled = rows[-1]
    assert pooled["group"] == "**main, all**" and pooled["runs"] == 2  # seed 2 is in the base only
    assert pooled["selected"] == [15.0, 17.0] and pooled["regret"] == [3.0, 0.5]
    assert pooled["improved"] == [4.5, 5.0] and pooled["raw"] == [2.0, 2.0]
    assert pooled["selected_diff"] == [3.0, 1.0]
    assert "+2.00 ± 1.41" in compare_matrices.table(rows)


def test_compare_matrices_targets_use_the_base_gaussian_runs_of_the_new_seeds(tmp_path):
    """--targets: issue 8's four margins per dataset, each side's UEPO against the base's Gaussian of the same seeds."""
    compare_matrices = load_compare_matrices()

    def record(variant: str, seed: int, raw: list[float], selected: float, regret: float) -> dict:
        return {"dataset": "d", "variant": variant, "seed": seed, "raw": raw, "improved": raw, "selected": selected,
                "regret": regret, "dataset_episodes": 10.0}

    base = {(r["dataset"], r["variant"], r["seed"]): r for r in (
        record("main", 3, [8.0, 10.0], 9.0, 3.0), record("main", 4, [10.0, 12.0], 11.0, 1.0),
        record("gaussian-ensemble", 3, [10.0], 10.0, 0.0), record("gaussian-ensemble", 4, [12.0], 12.0, 0.0),
        record("gaussian-ensemble", 0, [99.0], 99.0, 0.0))}  # seed 0 is not in the new side: not compared
    new = {("d", "main", s): record("main", s, [12.0, 12.0], sel, 0.5) for s, sel in ((3, 13.0), (4, 12.0))}
    (row,) = compare_matrices.targets(base, new)
    assert row["seeds"] == [3, 4] and row["gaussian_seeds"] == 2
    assert row["base"] == pytest.approx([10.0 - 11.0, 10.0 - 10.0, 10.0 - 1.059 * 11.0, 1.0 - 2.0])
    assert row["new"] == pytest.approx([12.0 - 11.0, 12.5 - 10.0, 12.5 - 1.059 * 11.0, 0.5])
    table = compare_matrices.targets_table([row])
    assert "| 1 → 4 |" in table and "targets met: 1 → 4 of 4" in table  # base: selected ≥ data only
