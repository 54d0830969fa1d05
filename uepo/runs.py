"""Run directory, metrics, checkpoints and reproducibility (docs/CONTRACTS.md).

A run directory holds ``config.yaml``, ``metrics.csv`` (long format: time, phase, step, key,
value) with the same scalars as TensorBoard events, ``checkpoints/*.pt`` (atomic writes, plus
``latest.pt``), ``plots/`` and ``summary.json``. Every write that a crash could tear is atomic:
temp file, fsync, ``os.replace``.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


class NonFiniteLossError(RuntimeError):
    """A loss or metric became NaN/inf; the message names the phase, step and quantity."""


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or "unknown CPU". Runs reproduce bit for bit only on one
    CPU kind: another instruction set (AVX2 against AVX-512) takes other kernel paths and rounds
    differently, so summary.json records it beside torch's dispatch level."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def provenance(device: str = "cpu", threads: int | None = None, processes: int = 1) -> dict[str, Any]:
    """What a run's numbers depend on besides its config: code version, torch, CPU kind, kernel backend."""
    from uepo import ops  # here: importing ops loads the compiled library, which most users of runs.py never need

    return {"git_commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
            "kernel_backend": ops.backend(device), "threads": threads or torch.get_num_threads(),
            "machine": platform.machine(), "cpu": cpu_model(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "processes": processes}


def check_finite(value: Tensor | float, phase: str, step: int, name: str) -> None:
    """Raise ``NonFiniteLossError`` when ``value`` holds a NaN or an infinity."""
    finite = bool(torch.isfinite(value).all()) if isinstance(value, Tensor) else math.isfinite(float(value))
    if not finite:
        raise NonFiniteLossError(
            f"phase {phase!r}, step {step}: {name} is not finite ({value!r}). The last good checkpoint "
            "is kept; lower the learning rate or check the dataset for NaNs, then resume with --resume."
        )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (the one seeding helper of the project)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    """State of every generator that training draws from, for checkpoints."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Inverse of ``capture_rng``."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    _atomic_write_bytes(Path(path), lambda f: torch.save(obj, f))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write_bytes(Path(path), lambda f: f.write(text.encode()))


# Checkpoints in the order the pipeline writes them (``latest.pt`` never moves back along it).
CHECKPOINT_ORDER = ("critics_progress", "critics", "pretrain_progress", "pretrain", "dynamics_T0_progress",
                    "dynamics_T0", "dynamics_augmented", "dynamics_T_progress", "dynamics", "improve_cache",
                    "improve_progress", "improve", "offline", "online")


class Run:
    """One run directory: metrics, timers, checkpoints, summary."""

    def __init__(self, root: Path, resume: bool = False, tensorboard: bool = True, rank: int = 0):
        self.dir = Path(root)
        self.resume = resume  # the caller decides whether phases restart from their checkpoints
        self.rank = rank  # in a torchrun run, ranks > 0 read the run but write only their own *_rank<r> files
        self.checkpoints = self.dir / "checkpoints"
        self.plots = self.dir / "plots"
        self._metrics_path = self.dir / "metrics.csv"
        self._tb = None
        self._pending: list[list] | None = None  # a rank > 0's rows while it collects them for rank 0
        if rank > 0:
            return
        for d in (self.dir, self.checkpoints, self.plots):
            d.mkdir(parents=True, exist_ok=True)
        new_file = not self._metrics_path.exists()
        self._metrics_file = open(self._metrics_path, "a", newline="")  # noqa: SIM115 (lives with the run)
        self._csv = csv.writer(self._metrics_file)
        if new_file:
            self._csv.writerow(["time", "phase", "step", "key", "value"])
            self._metrics_file.flush()
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is a declared dependency; the CSV still has everything
                SummaryWriter = None
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(self.dir))

    # -- metrics -------------------------------------------------------------------------------
    def log(self, phase: str, step: int, **metrics: float) -> None:
        now = f"{time.time():.3f}"
        self.log_rows([[now, phase, int(step), key, repr(float(v.item() if isinstance(v, Tensor) else v))]
                       for key, v in metrics.items()])

    def log_rows(self, rows: list[list]) -> None:
        """Append metrics.csv rows (time, phase, step, key, value), also to TensorBoard; rows of
        another run keep the time they were logged at."""
        if self.rank > 0:
            if self._pending is not None:
                self._pending += rows
            return
        for row in rows:
            self._csv.writerow(row)
            if self._tb is not None:
                self._tb.add_scalar(f"{row[1]}/{row[3]}", float(row[4]), int(row[2]))
        self._metrics_file.flush()

    def collect_rows(self) -> None:
        """From now on a rank > 0 keeps the rows it logs (work of its own, e.g. its sub-policies in phase D)
        until ``take_pending_rows`` hands them to rank 0; otherwise its rows are rank 0's too and dropped."""
        if self.rank > 0:
            self._pending = []

    def take_pending_rows(self) -> list[list]:
        """The rows collected since ``collect_rows`` (and stop collecting)."""
        rows, self._pending = self._pending or [], None
        return rows

    def drop_metrics(self, phase: str, after_step: int = -1, key_prefix: str = "") -> None:
        """Remove ``phase``'s metrics.csv rows with step > ``after_step`` (and key starting with
        ``key_prefix``): a phase resuming from a checkpoint logs those steps again, so the file ends
        as an uninterrupted run's would (TensorBoard keeps both; it shows the later one)."""
        if self.rank > 0:
            return
        self._metrics_file.close()
        with open(self._metrics_path, newline="") as f:
            text = f.read()
        torn = bool(text) and not text.endswith("\n")  # a kill mid-write: the next row would join it
        rows = list(csv.reader(io.StringIO(text[:text.rfind("\n") + 1] if torn else text)))
        kept = rows[:1] + [r for r in rows[1:] if not (r[1] == phase and int(r[2]) > after_step
                                                       and r[3].startswith(key_prefix))]
        if torn or len(kept) != len(rows):
            buf = io.StringIO()
            csv.writer(buf).writerows(kept)
            atomic_write_text(self._metrics_path, buf.getvalue())
        self._metrics_file = open(self._metrics_path, "a", newline="")  # noqa: SIM115
        self._csv = csv.writer(self._metrics_file)

    @contextlib.contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        """Adds the wall time of the block to summary.json's ``timings_s[phase]`` (accumulates on resume)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            timings = dict(self.read_summary().get("timings_s", {}))
            timings[phase] = round(timings.get(phase, 0.0) + elapsed, 3)
            self.update_summary(timings_s=timings)  # rank 0's alone

    # -- checkpoints ---------------------------------------------------------------------------
    def save_checkpoint(self, name: str, state: dict) -> Path:
        """Write checkpoints/<name>.pt atomically, and latest.pt too unless the run already holds a
        checkpoint of a later pipeline stage (a resumed run re-saves offline.pt after online.pt). A rank's own
        checkpoint (``*_rank<r>``) is written by that rank and never becomes latest.pt; other names by rank 0."""
        path = self.checkpoints / f"{name}.pt"
        own = name.endswith(f"_rank{self.rank}")
        if self.rank > 0 and not own:
            return path
        atomic_torch_save(state, path)
        if own:
            return path
        later = CHECKPOINT_ORDER[CHECKPOINT_ORDER.index(name) + 1:] if name in CHECKPOINT_ORDER else ()
        if name != "latest" and not any((self.checkpoints / f"{n}.pt").exists() for n in later):
            atomic_torch_save(state, self.checkpoints / "latest.pt")
        return path

    def load_checkpoint(self, name: str) -> dict | None:
        path = self.checkpoints / f"{name}.pt"
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torn or foreign file: say which and what to do
            raise RuntimeError(
                f"checkpoint {path} cannot be read ({exc}); delete it to restart that phase from its "
                "previous checkpoint"
            ) from exc

    # -- summary -------------------------------------------------------------------------------
    def read_summary(self) -> dict:
        path = self.dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def update_summary(self, **items: Any) -> None:
        if self.rank > 0:
            return
        summary = self.read_summary()
        summary.update(items)
        atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2, default=_json_default))

    def close(self) -> None:
        if self.rank > 0:
            return
        self._metrics_file.close()
        if self._tb is not None:
            self._tb.close()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to summary.json")
