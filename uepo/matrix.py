"""The run matrix: datasets × seeds × variants of ``python -m uepo.train``, what each run needs, and its tables.

Nothing here needs Ray: ``uepo.sweep`` decides *where* the jobs run (Ray tasks); this module decides
*what* each job runs and reads back what it gave, so ``python -m uepo.sweep report`` works anywhere.

Runs go to ``<out>/<dataset>/<variant>-s<seed>`` (``uepo.train --run_dir``), one process each, with its
own torch threads. Each variant starts from its seed's ``main`` run with ``--reuse_from``, so it
retrains only the phases its flag changes (uepo/reuse.py); a variant therefore waits for its main run.
A run that stopped is resumed; a finished one is skipped. A run directory holding a ``RUNNING`` file
with a live pid on this host is being run by another process and is waited for (a ``RUNNING`` file
from another host cannot be checked from here and is taken as stale: run one sweep per ``--out``).
"""

from __future__ import annotations

import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from uepo.evaluate import evaluation_episode_scores, regret_floor, uniform_regret

VARIANTS = {
    "main": [],
    "gaussian-ensemble": ["--policy", "gaussian-ensemble"],
    "no-augmentation": ["--no-augmentation"],
    "no-seq-kl": ["--no-seq-kl"],
    # the sequence-KL weight α set explicitly: 1e-4 is today's default, 1e-3 the one before (RESULTS 0a)
    "alpha-1e-4": ["--pretrain.alpha", "1e-4"],
    "alpha-1e-3": ["--pretrain.alpha", "1e-3"],
    "gaussian-alpha-1e-3": ["--policy", "gaussian-ensemble", "--pretrain.alpha", "1e-3"],  # the BC ensemble's KL too
    "no-divergence": ["--no-divergence"],
    # the diffusion policy's defaults before stop 40: uniform batches, selection on the gate's values (RESULTS 0t)
    "no-floor-gate-select": ["--pretrain.start_floor", "0", "--pretrain.start_action_weight", "1",
                             "--improve.validate_states", "0"],
    # the defaults before stop 34: ε-prediction and Uni-O4's any-gain acceptance (RESULTS 0n); phase A reused
    "eps-no-gate": ["--pretrain.prediction", "eps", "--improve.accept_z", "0"],
    # phase C at bench's previous 100 updates per epoch (400 since RESULTS 0c), both policy kinds
    "dynamics-100": ["--dynamics.max_updates_per_epoch", "100"],
    "gaussian-dynamics-100": ["--policy", "gaussian-ensemble", "--dynamics.max_updates_per_epoch", "100"],
    # AM-Q from 256 start states (the paper protocol's count; bench has 64): phases A–C reused, D rerun
    "ope-states-256": ["--improve.ope_states", "256"],
    # BPPO heads accepted only when AM-Q's paired gain clears 2 standard errors: phases A–C reused, D rerun
    "accept-z-2": ["--improve.accept_z", "2"],
    # i* selected on AM-Q from 256 fresh start states, not the BPPO gate's own: phases A–C reused, D rerun
    "validate-256": ["--improve.validate_states", "256"],
    "seed-screen-16": ["--pretrain.seed_candidates", "16"],
    "gaussian-validate-256": ["--policy", "gaussian-ensemble", "--improve.validate_states", "256"],
    # Uni-O4's selection (top-k by AM-Q, then a few real episodes each): phases A–C reused, D rerun
    "amq-topk-online": ["--selection", "amq-topk-online"],
    # i* by Ĵ_raw − (Ĵ − Ĵ_raw): BPPO's AM-Q gain counts against a sub-policy (RESULTS 0f); D's selection only
    "gain-penalty": ["--selection", "amq-gain-penalty"],
}
DEFAULT_VARIANTS = ["main", "gaussian-ensemble", "no-augmentation", "no-seq-kl", "no-divergence"]  # a sweep's default
PHASE_KEYS = ["A_critics", "B_pretrain", "C_dynamics", "D_improve", "evaluation"]
CSV_FIELDS = ["dataset", "variant", "seeds", "selected_mean", "selected_std", "raw_mean"]


@dataclass
class Job:
    dataset: str
    seed: int
    variant: str
    out: Path
    preset: str
    reuse_root: Path | None = None  # an earlier matrix: start from the same run's finished phases there
    threads: int = 1  # torch threads (and OMP_NUM_THREADS) of the run's process: the CPUs it is given
    phases: str = "offline"  # or "all": phases A–E
    extra: tuple[str, ...] = ()  # further uepo.train flags, the same for every run of the matrix

    @property
    def run_dir(self) -> Path:
        return self.out / self.dataset / f"{self.variant}-s{self.seed}"

    @property
    def main_dir(self) -> Path:
        return self.out / self.dataset / f"main-s{self.seed}"

    @property
    def log_path(self) -> Path:
        return self.run_dir.with_suffix(".log")

    def main_job(self) -> Job:
        return Job(self.dataset, self.seed, "main", self.out, self.preset, self.reuse_root, self.threads,
                   self.phases, self.extra)

    def summary(self) -> dict:
        path = self.run_dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def finished(self) -> bool:
        """Scored; with ``phases="all"`` also past phase E (train.py writes phases_not_run last, [] then)."""
        summary = self.summary()
        scored = summary.get("scores", {}).get("selected") is not None
        return scored and (self.phases == "offline" or summary.get("phases_not_run") == [])

    def running_elsewhere(self) -> bool:
        """A live process on this host holds the run (``RUNNING``: "pid host", or "pid" as older sweeps wrote)."""
        pid_file = self.run_dir / "RUNNING"
        if not pid_file.exists():
            return False
        fields = pid_file.read_text().split()
        if len(fields) > 1 and fields[1] != socket.gethostname():
            return False
        try:
            os.kill(int(fields[0]), 0)
        except (ValueError, IndexError, ProcessLookupError, PermissionError):
            return False
        return True

    def ready(self) -> bool:
        return self.variant == "main" or self.main_job().finished()

    def command(self, python: str = sys.executable) -> list[str]:
        cmd = [python, "-m", "uepo.train", "--dataset", self.dataset, "--preset", self.preset,
               "--seed", str(self.seed), "--phases", self.phases, "--run_dir", str(self.run_dir),
               *VARIANTS[self.variant], *self.extra]
        prior = self.reuse_root / self.dataset / self.run_dir.name if self.reuse_root else None
        if (self.run_dir / "config.yaml").exists():
            return cmd + ["--resume"]  # keeps the run's own threads: a resumed run must not change its config
        cmd += ["--threads", str(self.threads)]
        if prior is not None and (prior / "config.yaml").exists():
            cmd += ["--reuse_from", str(prior)]  # phases whose inputs did not change are copied, not retrained
        elif self.variant != "main":
            cmd += ["--reuse_from", str(self.main_dir)]
        return cmd


def child_env(threads: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """One run's environment: its thread count for OpenMP too (else torch's pool fights the other runs)."""
    return dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="passive", HF_HUB_OFFLINE="1",
                PYTHONUNBUFFERED="1", **(extra or {}))


def run_job(job: Job, env: dict[str, str] | None = None, poll_s: float = 5.0) -> dict:
    """Run one job to its end in a child process, logging to ``<run_dir>.log``.

    Ray-agnostic (``uepo.sweep`` runs it as a Ray task), and decides on the spot, not when it was
    queued: a run another process holds is waited for, then resumed or skipped as it was left."""
    start = time.time()
    while job.running_elsewhere():
        time.sleep(poll_s)
    if job.finished():
        return job_result(job, 0, start, "finished elsewhere")
    if not job.ready():
        return job_result(job, None, start, "its main run is not finished")
    job.run_dir.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "a") as log:  # the child keeps its own handle
        proc = subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT,
                                env=child_env(job.threads, env))
    running = job.run_dir / "RUNNING"
    running.write_text(f"{proc.pid} {socket.gethostname()}")
    try:
        returncode = proc.wait()
    finally:
        running.unlink(missing_ok=True)
    return job_result(job, returncode, start, "")


def job_result(job: Job, returncode: int | None, start: float, note: str) -> dict:
    return {"run_dir": str(job.run_dir), "returncode": returncode, "seconds": time.time() - start,
            "host": socket.gethostname(), "note": note}


def mean_std(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f} (1 seed)"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def phase_time(summary: dict, key: str) -> tuple[float | None, bool]:
    """Seconds of a phase and whether they were spent in the main run (phase reused)."""
    reused = summary.get("reused", {}).get("timings_s", {})
    if key in reused:
        return reused[key], True
    return summary.get("timings_s", {}).get(key), False


def t0_fit_seconds(source: Path) -> float | None:
    """Wall time of the T̂0 fit in ``source``, from metrics.csv: end of phase B to T̂0's last epoch row."""
    path = source / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.reader(f))[1:]
    b_end = [float(r[0]) for r in rows if r[1] == "pretrain"]
    t0 = [float(r[0]) for r in rows if r[1] == "dynamics" and r[3] == "T0_holdout_mse"]
    return t0[-1] - b_end[-1] if b_end and t0 else None


def regret_floor_of(summary: dict) -> float | None:
    """A perfect pick's measured regret (``evaluate.regret_floor``) from the run's stored per-episode scores, as
    ``regret_uniform`` is recomputed: summaries before the key lack it (a fixed bootstrap seed: the same number)."""
    episodes = evaluation_episode_scores(summary.get("evaluation", {}))
    return None if episodes is None else regret_floor(episodes)


def run_record(job: Job) -> dict:
    """What matrix.json keeps of one finished run."""
    s = job.summary()
    sc = s["scores"]
    report = sc.get("selection_report", {})
    return {
        "dataset": job.dataset, "variant": job.variant, "seed": job.seed, "preset": job.preset,
        "dataset_episodes": sc.get("dataset_episodes"), "raw": sc.get("raw"), "improved": sc.get("improved"),
        "selected": sc.get("selected"), "selected_index": sc.get("selected_index"),
        "selection_method": sc.get("selection_method"), "regret": report.get("regret"),
        "regret_uniform": uniform_regret(sc.get("raw"), sc.get("improved")),  # summaries before it lack the key
        "regret_floor": regret_floor_of(s),
        "regret_vs_raw": report.get("regret_vs_raw"), "regret_vs_improved": report.get("regret_vs_improved"),
        "amq_rank_correlation": report.get("amq_rank_correlation"),
        "amq_raw_rank_correlation": report.get("amq_raw_rank_correlation"),
        "amq_picks_best_improved": report.get("amq_picks_best_improved"),
        "amq_raw": sc.get("amq_raw"), "amq_best": sc.get("amq_selected_candidates"),
        "amq_plausible": sc.get("amq_plausible"), "nearest_divergence": sc.get("nearest_divergence"),
        "warnings": s.get("warnings", []),
        "phase_seconds": {k: phase_time(s, k)[0] for k in PHASE_KEYS},
        "phases_reused": s.get("reused", {}).get("checkpoints", []),
        "git_commit": s.get("provenance", {}).get("git_commit"),
        "episodes": len(s.get("evaluation", {}).get("selected", {}).get("scores") or []),
    }


def selection_lines(ds_jobs: list[Job], seeds: list[int]) -> list[str]:
    """Regret and AM-Q rank correlation per variant and seed."""
    lines = ["", "Selection, measured in the real env: regret = best real score over raw and improved "
             "sub-policies − the selected one's; ρ = Spearman correlation of AM-Q with the improved "
             "sub-policies' real scores (raw: of the raw μⁱ's AM-Q with their scores); ✓ = AM-Q ranked the "
             "best improved sub-policy first; a perfect pick's = the regret that a pick knowing every true score "
             "still measures, from the evaluation's own episode noise (a paired bootstrap of its episodes):", "",
             "| variant | " + " | ".join(f"seed {s}: regret / ρ / ρ raw" for s in seeds)
             + " | mean regret | a random pick's | a perfect pick's | best first |",
             "|---|" + "---|" * (len(seeds) + 4)]
    for variant in VARIANTS:
        recs = {j.seed: run_record(j) for j in ds_jobs if j.variant == variant and j.finished()}
        if not recs or all(r["regret"] is None for r in recs.values()):
            continue

        def cell(r: dict) -> str:
            rho = "—" if r["amq_rank_correlation"] is None else f"{r['amq_rank_correlation']:+.2f}"
            rho_raw = "—" if r["amq_raw_rank_correlation"] is None else f"{r['amq_raw_rank_correlation']:+.2f}"
            return f"{r['regret']:.1f} / {rho} / {rho_raw}" + (" ✓" if r["amq_picks_best_improved"] else "")
        regrets = [r["regret"] for r in recs.values() if r["regret"] is not None]
        uniform = [r["regret_uniform"] for r in recs.values() if r["regret_uniform"] is not None]
        floors = [r["regret_floor"] for r in recs.values() if r["regret_floor"] is not None]
        firsts = sum(bool(r["amq_picks_best_improved"]) for r in recs.values())
        lines.append(f"| {variant} | " + " | ".join(cell(recs[s]) if s in recs else "—" for s in seeds)
                     + f" | {mean_std(regrets)} | {mean_std(uniform)} | {mean_std(floors) if floors else '—'} "
                     f"| {firsts} of {len(recs)} |")
    return lines


def write_json(jobs: list[Job], path: Path) -> None:
    records = [run_record(j) for j in jobs if j.finished()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": records}, indent=1) + "\n")


def collect(jobs: list[Job], dest: Path) -> int:
    """Copy each finished run's summary.json and config.yaml to ``dest/<dataset>/<variant>-s<seed>-*``
    (what docs/results/ keeps of a matrix); returns how many runs were copied."""
    count = 0
    for job in (j for j in jobs if j.finished()):
        target = dest / job.dataset
        target.mkdir(parents=True, exist_ok=True)
        for name in ("summary.json", "config.yaml"):
            (target / f"{job.run_dir.name}-{name}").write_bytes((job.run_dir / name).read_bytes())
        count += 1
    return count


GAUSSIAN_FACTOR = 1.059  # issue 8: selected UEPO ≥ this × the selected gaussian-ensemble (the paper's +5.9 %)
TARGETS = ("raw ≥ raw Gaussian", "selected ≥ data", f"selected ≥ {GAUSSIAN_FACTOR} × selected Gaussian", "regret ≤ 1")


def _avg(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def target_values(main: list[dict], gauss: list[dict]) -> dict[str, float | None]:
    """Issue 8's quantities over one dataset's run records (``run_record``): means over seeds, the raw
    score of a run being the mean of its n raw sub-policies; None where no run has the value."""
    def raw(recs: list[dict]) -> float | None:
        return _avg([statistics.mean(r["raw"]) for r in recs if r["raw"]])

    return {"raw": raw(main), "raw_gaussian": raw(gauss),
            "selected": _avg([r["selected"] for r in main]), "selected_gaussian": _avg([r["selected"] for r in gauss]),
            "data": main[0]["dataset_episodes"] if main else None,
            "regret": _avg([r["regret"] for r in main if r["regret"] is not None])}


def target_margins(main: list[dict], gauss: list[dict]) -> list[float | None]:
    """Each of ``TARGETS``' margins over one dataset's runs (≥ 0: met; None: a side has no runs)."""
    v = target_values(main, gauss)

    def diff(a: float | None, b: float | None, factor: float = 1.0) -> float | None:
        return None if a is None or b is None else a - factor * b
    return [diff(v["raw"], v["raw_gaussian"]), diff(v["selected"], v["data"]),
            diff(v["selected"], v["selected_gaussian"], GAUSSIAN_FACTOR), diff(1.0, v["regret"])]


def targets_table(jobs: list[Job]) -> list[str]:
    """Issue 8's targets per dataset, main method against gaussian-ensemble, means over finished seeds."""
    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    lines = [f"| dataset | seeds | raw μⁱ: UEPO / Gaussian | selected UEPO | data's own | {GAUSSIAN_FACTOR} × selected "
             "Gaussian | mean regret (a random pick's; a perfect pick's) | AM-Q ranks best first |",
             "|---|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(j.dataset for j in jobs):
        recs = {v: [run_record(j) for j in jobs if j.dataset == dataset and j.variant == v and j.finished()]
                for v in ("main", "gaussian-ensemble")}
        main, gauss = recs["main"], recs["gaussian-ensemble"]
        if not main:
            continue
        v = target_values(main, gauss)
        uniform = _avg([r["regret_uniform"] for r in main if r["regret_uniform"] is not None])
        floor = _avg([r["regret_floor"] for r in main if r["regret_floor"] is not None])
        firsts = sum(bool(r["amq_picks_best_improved"]) for r in main)
        target_g = None if v["selected_gaussian"] is None else GAUSSIAN_FACTOR * v["selected_gaussian"]
        lines.append(f"| {dataset} | {len(main)} | {fmt(v['raw'])} / {fmt(v['raw_gaussian'])} | {fmt(v['selected'])} "
                     f"| {fmt(v['data'])} | {fmt(target_g)} "
                     f"| {fmt(v['regret'])} ({fmt(uniform)}; {fmt(floor)}) "
                     f"| {firsts} of {len(main)} |")
    return lines


def report(jobs: list[Job]) -> str:
    lines = ["### Targets", "", *targets_table(jobs), ""]
    for dataset in dict.fromkeys(j.dataset for j in jobs):
        ds_jobs = [j for j in jobs if j.dataset == dataset]
        seeds = sorted({j.seed for j in ds_jobs})
        main = [j.summary() for j in ds_jobs if j.variant == "main" and j.finished()]
        lines += [f"### {dataset}", "", "| policy | " + " | ".join(f"seed {s}" for s in seeds)
                  + " | mean ± std over seeds |", "|---|" + "---|" * (len(seeds) + 1)]
        if main:
            ds, ds_std = main[0]["scores"]["dataset_episodes"], main[0]["scores"].get("dataset_episodes_std")
            spread = f"{ds:.1f} ± {ds_std:.1f} over episodes" if ds_std is not None else f"{ds:.1f}"
            lines.append("| dataset's own episodes | " + " | ".join(f"{ds:.1f}" for _ in seeds) + f" | {spread} |")
        for variant in VARIANTS:
            vals = {j.seed: j.summary()["scores"]["selected"] for j in ds_jobs if j.variant == variant and j.finished()}
            if not vals:
                continue
            name = "**selected (UEPO)**" if variant == "main" else f"selected, {variant}"
            lines.append(f"| {name} | " + " | ".join(f"{vals[s]:.1f}" if s in vals else "—" for s in seeds)
                         + f" | {mean_std(list(vals.values()))} |")
        lines += ["", "Raw sub-policies (μⁱ without head or BPPO, acting with the first action of their chunk; "
                  "for gaussian-ensemble, the BC members acting with their mean): all n scores per seed; over "
                  "seeds, mean ± std of the per-seed mean and of the per-seed best; div = mean nearest-competitor "
                  "divergence of the sub-policies' chunks on dataset states:",
                  "", "| variant | " + " | ".join(f"seed {s}" for s in seeds) + " | mean of μⁱ | best μⁱ | div |",
                  "|---|" + "---|" * (len(seeds) + 3)]
        for variant in VARIANTS:
            recs = {j.seed: run_record(j) for j in ds_jobs if j.variant == variant and j.finished()}
            raws = {s: r["raw"] for s, r in recs.items() if r["raw"]}
            if not raws:
                continue
            cells = [" / ".join(f"{x:.1f}" for x in raws[s]) if s in raws else "—" for s in seeds]
            means = [statistics.mean(r) for r in raws.values()]
            bests = [max(r) for r in raws.values()]
            divs = [r["nearest_divergence"] for r in recs.values() if r["nearest_divergence"] is not None]
            div = f"{statistics.mean(divs):.2f}" if divs else "—"
            lines.append(f"| {variant} | " + " | ".join(cells) + f" | {mean_std(means)} | {mean_std(bests)} "
                         f"| {div} |")
        lines += selection_lines(ds_jobs, seeds)
        lines += ["", "Wall time per phase, seconds, mean over the finished seeds. In brackets: reused "
                  "from the main run, i.e. measured there (T̂0: the fit on real data, the first part of C, "
                  "timed from the main run's metrics.csv); total spent counts this run's own work:", "",
                  "| variant | seeds | " + " | ".join(PHASE_KEYS) + " | total spent | checkpoints reused |",
                  "|---|---|" + "---|" * 7]
        for variant in VARIANTS:
            sums = [j.summary() for j in ds_jobs if j.variant == variant and j.finished()]
            if not sums:
                continue
            cells, total = [], 0.0
            for key in PHASE_KEYS:
                times = [phase_time(s, key) for s in sums]
                vals = [t for t, _ in times if t is not None]
                avg = statistics.mean(vals) if vals else 0.0
                reused = all(r for _, r in times)
                total += 0.0 if reused else avg
                cell = f"({avg:.0f})" if reused else f"{avg:.0f}"
                if key == "C_dynamics" and "dynamics_T0" in sums[0].get("reused", {}).get("checkpoints", []):
                    # seeds of one variant may differ in what they reused (runs gathered from two sweeps)
                    t0 = [t0_fit_seconds(Path(s["reused"]["from"])) for s in sums if "from" in s.get("reused", {})]
                    t0 = [t for t in t0 if t is not None]
                    cell += f" + ({statistics.mean(t0):.0f} T̂0)" if t0 else " + (T̂0)"
                cells.append(cell)
            reused = ", ".join(sums[0].get("reused", {}).get("checkpoints", [])) or "—"
            lines.append(f"| {variant} | {len(sums)} | " + " | ".join(cells) + f" | {total:.0f} | {reused} |")
        lines.append("")
    return "\n".join(lines)


def aggregate(jobs: list[Job]) -> list[dict]:
    """One row per dataset × variant over its finished seeds: the selected policy's score, mean and std."""
    rows = []
    for dataset in dict.fromkeys(j.dataset for j in jobs):
        for variant in VARIANTS:
            sums = [j.summary()["scores"] for j in jobs if j.dataset == dataset and j.variant == variant
                    and j.finished()]
            if not sums:
                continue
            selected = [s["selected"] for s in sums]
            raw = [statistics.mean(s["raw"]) for s in sums if s.get("raw")]
            rows.append({"dataset": dataset, "variant": variant, "seeds": len(sums), "selected": selected,
                         "selected_mean": statistics.mean(selected),
                         "selected_std": statistics.stdev(selected) if len(selected) > 1 else None,
                         "raw_mean": statistics.mean(raw) if raw else None})
    return rows


def aggregate_table(rows: list[dict]) -> str:
    """The rows as a markdown table; mean ± std in the same words as the report's tables."""
    lines = ["| dataset | variant | seeds | selected: mean ± std over seeds | raw μⁱ: mean |", "|---|---|---|---|---|"]
    for r in rows:
        raw = "—" if r["raw_mean"] is None else f"{r['raw_mean']:.1f}"
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['seeds']} | {mean_std(r['selected'])} | {raw} |")
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    """Plain numbers (no formatting), an empty cell where a value does not exist (std of one seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({k: ("" if r[k] is None else r[k]) for k in CSV_FIELDS} for r in rows)


def write_plot(rows: list[dict], path: Path) -> None:
    """Grouped bars: one group per dataset, one bar per variant, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    width = 0.8 / len(variants)
    fig, ax = plt.subplots(figsize=(max(5.0, 3.0 + 0.5 * len(datasets) * len(variants)), 4))
    for k, variant in enumerate(variants):
        cells = [(datasets.index(r["dataset"]), r) for r in rows if r["variant"] == variant]
        xs = [i + (k - (len(variants) - 1) / 2) * width for i, _ in cells]
        stds = [r["selected_std"] or 0.0 for _, r in cells]  # one seed: no spread to draw
        ax.bar(xs, [r["selected_mean"] for _, r in cells], width, yerr=stds, capsize=3, label=variant)
    ax.set_xticks(range(len(datasets)), datasets, rotation=10)
    ax.set_ylabel("selected policy's score (normalised ×100)")
    seeds = sorted({r["seeds"] for r in rows})
    count = f"{seeds[0]} seed{'s' * (seeds[0] > 1)}" if len(seeds) == 1 else f"{seeds[0]}–{seeds[-1]} seeds"
    ax.set_title(f"mean ± std over seeds ({count} per bar)" if count != "1 seed" else "one seed per bar: no spread")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
