"""python -m uepo.evaluate CHECKPOINT: score, video, clear errors."""

from __future__ import annotations

import torch
from test_online import tiny_bundle

from uepo import envs
from uepo.evaluate import main

torch.set_num_threads(1)


def test_scores_a_checkpoint_and_a_run_directory(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    torch.save(tiny_bundle(), tmp_path / "checkpoints" / "offline.pt")
    assert main([str(tmp_path / "checkpoints" / "offline.pt"), "--episodes", "2"]) == 0
    first = capsys.readouterr().out
    assert "Hopper-v5" in first and "sub-policy 1: normalised score" in first
    assert main([str(tmp_path), "--episodes", "2"]) == 0  # a run dir: its latest policy checkpoint
    assert capsys.readouterr().out.split(": ", 1)[1] == first.split(": ", 1)[1]


def test_video_or_the_reason(tmp_path, capsys):
    torch.save(tiny_bundle(), tmp_path / "offline.pt")
    video = tmp_path / "ep.mp4"
    code = main([str(tmp_path / "offline.pt"), "--episodes", "1", "--video", str(video)])
    err = capsys.readouterr().err
    if envs.video_writer_problem() is not None:
        assert code == 2 and "pip install" in err
    elif code == 3:
        assert "MUJOCO_GL" in err  # no OpenGL here: said so
    else:
        assert code == 0 and video.stat().st_size > 0


def test_clear_errors(tmp_path, capsys):
    assert main([str(tmp_path / "missing.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main([str(tmp_path)]) == 2
    assert "holds no checkpoints/online.pt" in capsys.readouterr().err
    (tmp_path / "torn.pt").write_bytes(b"not a checkpoint")
    assert main([str(tmp_path / "torn.pt")]) == 2
    assert "cannot be read" in capsys.readouterr().err
    torch.save({"model": {}}, tmp_path / "critics.pt")
    assert main([str(tmp_path / "critics.pt")]) == 2
    assert "not a uepo policy checkpoint" in capsys.readouterr().err
