"""``--reuse_from RUN_DIR``: start a run from the finished phases of an earlier one.

An ablation changes one phase; the phases upstream of it are the same computation as in the main
run. Every phase seeds itself from the run seed when it starts (``uepo/phases/__init__.py``), so a
finished phase checkpoint copied from a run whose config matches on everything that phase reads
gives the same result, to the bit on the CPU, as training it again. A phase is copied only when
the dataset content and all the config fields it depends on are equal; otherwise it is retrained.
Copied phases bring their metrics.csv rows, and their wall time is recorded under
``summary.json["reused"]`` (the run's own ``timings_s`` only measures what this run did).
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from uepo.config import Config, from_dict, load_run_yaml, resolve_by_policy, to_dict
from uepo.runs import Run

TOP = ("dataset", "seed", "device", "threads", "amp", "compile")  # fields every phase depends on
AUGMENTATION_FIELDS = ("augmentation", "augment_ratio", "fresh_seed_prob", "disagreement_quantile",
                       "augment_weight", "augment_batch")


@dataclass(frozen=True)
class Reusable:
    checkpoint: str  # checkpoints/<name>.pt
    top: tuple[str, ...]  # top-level config fields it depends on
    sections: tuple[str, ...]  # config sections it depends on, whole
    dynamics_without_augmentation: bool = False  # also the dynamics section minus AUGMENTATION_FIELDS
    metric_phase: str = ""  # metrics.csv rows to copy: this phase ...
    metric_prefix: str = ""  # ... with keys starting with this (a partial phase: its epoch rows, step > 0)
    timing: str = ""  # summary timings_s key of the source run


# In pipeline order. T̂0 (fit on real data only) is the first half of phase C: its checkpoint holds
# the generator and RNG state after the fit, so the augmentation and refit continue exactly.
REUSABLE = (
    Reusable("critics", TOP, ("data", "critics"), metric_phase="critics", timing="A_critics"),
    Reusable("pretrain", (*TOP, "policy"), ("data", "pretrain"), metric_phase="pretrain", timing="B_pretrain"),
    Reusable("dynamics_T0", TOP, ("data",), dynamics_without_augmentation=True, metric_phase="dynamics",
             metric_prefix="T0_"),
    # the final ensemble reads the sub-policies through the augmentation, hence pretrain's fields
    Reusable("dynamics", (*TOP, "policy"), ("data", "pretrain", "dynamics"), metric_phase="dynamics",
             timing="C_dynamics"),
    # D reads all of the above; copying it is what --resume after D does (an online-only change reuses it)
    Reusable("improve", (*TOP, "policy"), ("data", "critics", "pretrain", "dynamics", "improve"),
             metric_phase="improve", timing="D_improve"),
)


def _depends_on(entry: Reusable, cfg: dict) -> dict:
    view = {k: cfg.get(k) for k in entry.top}
    view.update({s: cfg.get(s) for s in entry.sections})
    if entry.dynamics_without_augmentation:
        view["dynamics"] = {k: v for k, v in cfg.get("dynamics", {}).items() if k not in AUGMENTATION_FIELDS}
    return view


def _dataset_hash(run_dir: Path) -> str | None:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    return json.loads(path.read_text()).get("dataset", {}).get("content_sha256")


def reusable_phases(cfg: Config, source: Path, dataset_hash: str | None) -> list[Reusable]:
    """The entries of REUSABLE that ``source`` holds and whose inputs equal ``cfg``'s."""
    if not (source / "config.yaml").exists():
        raise FileNotFoundError(f"--reuse_from: {source / 'config.yaml'} does not exist; pass the run "
                                "directory of an earlier run")
    if dataset_hash is not None and _dataset_hash(source) not in (None, dataset_hash):
        return []  # same id, other content: nothing upstream is the same computation
    # a field the source run predates reads as what that run computed with; by-policy fields compare resolved
    saved = to_dict(resolve_by_policy(from_dict(load_run_yaml(source / "config.yaml"))))
    current = to_dict(resolve_by_policy(cfg))
    matches = []
    for entry in REUSABLE:
        if (source / "checkpoints" / f"{entry.checkpoint}.pt").exists() and \
                _depends_on(entry, saved) == _depends_on(entry, current):
            matches.append(entry)
    return matches


def _copy_metrics(run: Run, source: Path, entries: list[Reusable]) -> None:
    src = source / "metrics.csv"
    if not src.exists():
        return
    with open(src, newline="") as f:
        rows = list(csv.reader(f))[1:]
    # a partial phase re-logs its step-0 summary rows itself after loading the checkpoint
    run.log_rows([r for r in rows for e in entries if r[1] == e.metric_phase and
                  (not e.metric_prefix or (r[3].startswith(e.metric_prefix) and int(r[2]) > 0))])


def reuse_phases(cfg: Config, source: Path, run: Run, dataset_hash: str | None) -> list[str]:
    """Copy the matching finished phases of ``source`` into ``run``; returns their checkpoint names."""
    source = Path(source)
    if source.resolve() == run.dir.resolve():
        raise ValueError("--reuse_from must name another run directory (use --resume to continue this one)")
    entries = [e for e in reusable_phases(cfg, source, dataset_hash)
               if not (run.checkpoints / f"{e.checkpoint}.pt").exists()]
    if any(e.checkpoint == "dynamics" for e in entries):  # the full ensemble already holds T̂0's rows
        entries = [e for e in entries if e.checkpoint != "dynamics_T0"]
    for e in entries:
        shutil.copy2(source / "checkpoints" / f"{e.checkpoint}.pt", run.checkpoints / f"{e.checkpoint}.pt")
    _copy_metrics(run, source, entries)
    src_summary = json.loads((source / "summary.json").read_text()) if (source / "summary.json").exists() else {}
    src_timings = src_summary.get("timings_s", {})
    run.update_summary(reused={
        "from": str(source),
        "git_commit": src_summary.get("provenance", {}).get("git_commit"),
        "checkpoints": [e.checkpoint for e in entries],
        "timings_s": {e.timing: src_timings[e.timing] for e in entries if e.timing in src_timings},
    })
    return [e.checkpoint for e in entries]
