"""One run on two processes (torchrun, gloo on the CPU) against the same run on one process.

Phases A–C are data-parallel over the same global batches, so the two runs differ only by the order of
floating-point sums (and, in B and C, by losses normalised per rank's shard of the masked chunk steps or
of the weighted real + generated data). The tolerances below are what that allows, stated per phase:
A 1e-5, B 1e-2, C 5e-2 relative on every logged metric. Phase D splits the sub-policies between the
ranks, each with its own streams, so it is checked for a valid, complete selection, not equal values.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TOLERANCE = {"critics": 1e-5, "pretrain": 1e-2, "dynamics": 5e-2}
TORCHRUN = Path(sys.executable).parent / "torchrun"


def train(args: list[str], processes: int) -> subprocess.CompletedProcess:
    """The README's commands: python -m uepo.train, or torchrun --standalone --nproc_per_node N -m uepo.train."""
    launcher = [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([*launcher, "-m", "uepo.train", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def metrics(root: Path) -> dict[tuple[str, int, str], float]:
    with open(root / "metrics.csv", newline="") as f:
        return {(r[1], int(r[2]), r[3]): float(r[4]) for r in list(csv.reader(f))[1:]}


@pytest.fixture(scope="module")
def runs(tiny_hopper, tmp_path_factory):
    root = tmp_path_factory.mktemp("distributed")
    common = ["--dataset", tiny_hopper, "--preset", "smoke", "--phases", "offline"]
    out = {}
    for processes in (1, 2):
        result = train([*common, "--run_dir", str(root / f"p{processes}")], processes)
        assert result.returncode == 0, result.stderr[-3000:]
        out[processes] = root / f"p{processes}"
    return out


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_two_processes_reach_the_losses_of_one(runs):
    one, two = metrics(runs[1]), metrics(runs[2])
    compared = 0
    for key, value in one.items():
        if key[0] in TOLERANCE:
            assert key in two, key
            assert abs(two[key] - value) <= TOLERANCE[key[0]] * max(abs(value), 1e-3), (key, value, two[key])
            compared += 1
    assert compared > 50
    summary = json.loads((runs[2] / "summary.json").read_text())
    assert summary["provenance"]["processes"] == 2
    improved = torch.load(runs[2] / "checkpoints" / "improve.pt", weights_only=False)
    n = len(improved["amq_best"])
    assert 0 <= improved["selected"] < n and len(improved["amq_raw"]) == n
    # both ranks' BPPO rows reached rank 0's metrics.csv
    assert {k[2] for k in two if k[0] == "improve" and k[2].startswith("accepted_")} == {
        f"accepted_{i}" for i in range(n)}


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed beside this python")
def test_a_two_process_run_resumes_from_its_checkpoints(runs, tmp_path, tiny_hopper):
    """Phases B–D lost (their progress checkpoints kept, each rank's own in D): resumed on two processes, the
    run continues from them to the uninterrupted result."""
    cut = tmp_path / "cut"
    shutil.copytree(runs[2], cut)
    for name in ("pretrain", "dynamics_T0", "dynamics_augmented", "dynamics_T_progress", "dynamics", "improve",
                 "offline", "latest"):
        (cut / "checkpoints" / f"{name}.pt").unlink(missing_ok=True)
    progress = torch.load(cut / "checkpoints" / "pretrain_progress.pt", weights_only=False)
    assert 0 < progress["step"] < 40
    result = train(["--resume", str(cut)], 2)
    assert result.returncode == 0, result.stderr[-3000:]
    full = torch.load(runs[2] / "checkpoints" / "improve.pt", weights_only=False)
    resumed = torch.load(cut / "checkpoints" / "improve.pt", weights_only=False)
    assert resumed["selected"] == full["selected"] and resumed["amq_best"] == full["amq_best"]
    for key, value in full["policy"]["state_dict"].items():
        assert torch.equal(value, resumed["policy"]["state_dict"][key]), key
