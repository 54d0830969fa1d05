"""The Python API (uepo.fit, uepo.load_policy, Policy.act/save) and resume as the README says it:
a bare ``--resume RUN_DIR`` continues a run started with non-default flags, after a SIGKILL in the
middle of the online phase, and ``python -m uepo.evaluate`` says when it scores an unfinished policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import uepo
from uepo.train import main

torch.set_num_threads(1)


def test_fit_load_act_save(tiny_hopper, tmp_path):
    run = uepo.fit("smoke", dataset=tiny_hopper, progress=False, seed=3, phases="offline",
                   run_dir=str(tmp_path / "run"), improve={"eval_episodes": 0})
    assert (run.dir / "checkpoints" / "offline.pt").exists() and run.read_summary()["seed"] == 3
    policy = uepo.load_policy(run.dir)
    bundle = torch.load(run.dir / "checkpoints" / "offline.pt", weights_only=False)
    assert policy.index == bundle["selected"] and policy.env_id == "Hopper-v5" and policy.status is None
    env = policy.make_env()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (policy.history, 11)
    action = policy.act(obs)
    assert action.shape == (3,) and np.all(np.abs(action) <= 1)
    expected = policy.model.act(torch.as_tensor(obs, dtype=torch.float32)[None], policy.index).numpy()[0]
    np.testing.assert_array_equal(action, expected)
    batch = np.stack([obs, obs + 0.01])
    assert policy.act(batch).shape == (2, 3)
    # an episode's first state alone is padded as ObservationHistory pads it
    np.testing.assert_array_equal(policy.act(obs[-1:]), policy.act(np.repeat(obs[-1:], policy.history, 0)))
    with pytest.raises(ValueError, match="obs_history must have shape"):
        policy.act(np.zeros((2, 5)))
    saved = uepo.load_policy(policy.save(tmp_path / "p.pt"))
    np.testing.assert_array_equal(saved.act(batch), policy.act(batch))
    assert uepo.load_policy(run.dir, sub_policy=2).index == 2


def _train(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "uepo.train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def test_bare_resume_after_a_sigkill_mid_online_and_evaluate_says_unfinished(tiny_hopper, tmp_path, capsys):
    run_dir = tmp_path / "run"
    flags = ["--dataset", tiny_hopper, "--preset", "smoke", "--seed", "3", "--run_dir", str(run_dir),
             "--critics.expectile", "0.8", "--online.env_steps", "6144", "--online.checkpoint_every", "512",
             "--online.eval_every", "100000"]
    proc = _train(flags)
    online = run_dir / "checkpoints" / "online.pt"
    deadline = time.time() + 600
    while not online.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()  # still running, in phase E
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(online, weights_only=False)
    assert not saved["done"] and 0 < saved["counters"]["env_steps"] < 6144

    from uepo.evaluate import main as evaluate

    assert evaluate([str(run_dir), "--episodes", "1"]) == 0
    assert "unfinished online policy" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="unfinished online policy"):
        uepo.load_policy(run_dir)

    # flags that differ from the run's own config are refused, with the list of differences
    assert main(["--resume", str(run_dir), "--critics.expectile", "0.9", "--preset", "bench"]) == 2
    err = capsys.readouterr().err
    assert "critics.expectile: 0.8 -> 0.9" in err and "preset: 'smoke' -> 'bench'" in err
    # the bare form continues the run with the config it was started with
    assert main(["--resume", str(run_dir)]) == 0
    s = json.loads((run_dir / "summary.json").read_text())
    assert s["online"]["env_steps"] == 6144 and len(s["phases_run"]) == 6
    latest = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=False)
    assert latest["done"] and latest["counters"]["env_steps"] == 6144  # latest.pt is the finished online state
    assert evaluate([str(run_dir), "--episodes", "1"]) == 0
    assert "unfinished" not in capsys.readouterr().err
