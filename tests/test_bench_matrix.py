"""scripts/bench_matrix.py (an alias of uepo.sweep): a main run and an ablation that reuses it, run by the
scheduler on a local Ray, then tabulated."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason='the scheduler runs on Ray, the sweep extra: pip install -e ".[sweep]"')

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_matrix.py"


@pytest.fixture(scope="module")
def bench_matrix():
    spec = importlib.util.spec_from_file_location("bench_matrix", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_matrix_runs_the_ablation_from_its_main_run_and_reports_it(bench_matrix, tiny_hopper, tmp_path):
    jobs = [bench_matrix.Job(tiny_hopper, 3, variant, tmp_path, "smoke") for variant in ("main", "no-augmentation")]
    assert not jobs[1].ready()  # waits for its main run
    assert bench_matrix.run_matrix(jobs, workers=2) == 0
    assert all(job.finished() for job in jobs)
    main, ablation = (json.loads((job.run_dir / "summary.json").read_text()) for job in jobs)
    assert ablation["reused"]["checkpoints"] == ["critics", "pretrain", "dynamics_T0"]
    assert ablation["scores"]["raw"] == main["scores"]["raw"]  # the same phase B, so the same raw μ^i
    table = bench_matrix.report(jobs)
    assert "| selected, no-augmentation |" in table and "critics, pretrain, dynamics_T0" in table
    assert bench_matrix.run_matrix(jobs, workers=2) == 0  # finished runs are skipped, not rerun
    assert "### Targets" in table and "Selection, measured in the real env" in table
    assert "| main |" in table.split("Selection")[1]
    bench_matrix.write_json(jobs, tmp_path / "matrix.json")
    records = json.loads((tmp_path / "matrix.json").read_text())["runs"]
    assert [(r["variant"], r["seed"]) for r in records] == [("main", 3), ("no-augmentation", 3)]
    for r in records:
        assert r["regret"] >= 0 and len(r["improved"]) == len(r["raw"]) == 4
        assert r["selected"] == r["improved"][r["selected_index"]] and r["phase_seconds"]["B_pretrain"] is not None
