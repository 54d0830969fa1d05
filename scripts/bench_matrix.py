"""Run the issue-3 comparison matrix (datasets × seeds × variants, offline phases) and tabulate it.

    python scripts/bench_matrix.py run --datasets local/hopper/medium-v0 local/hopper/medium-replay-v0 \
        --seeds 0 1 2 --workers 2
    python scripts/bench_matrix.py report > table.md

Runs go to ``<out>/<dataset>/<variant>-s<seed>`` (``uepo.train --run_dir``), one process per worker,
one torch thread each. Each variant starts from its seed's ``main`` run with ``--reuse_from``, so
it retrains only the phases its flag changes (uepo/reuse.py); a variant therefore waits for its
main run. A run that stopped is resumed; a finished one is skipped. A run directory holding a
``RUNNING`` file with a live pid is being run by another process and is waited for.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VARIANTS = {
    "main": [],
    "gaussian-ensemble": ["--policy", "gaussian-ensemble"],
    "no-augmentation": ["--no-augmentation"],
    "no-seq-kl": ["--no-seq-kl"],
    "no-divergence": ["--no-divergence"],
}
PHASE_KEYS = ["A_critics", "B_pretrain", "C_dynamics", "D_improve", "evaluation"]


@dataclass
class Job:
    dataset: str
    seed: int
    variant: str
    out: Path
    preset: str
    reuse_root: Path | None = None  # an earlier matrix: start from the same run's finished phases there

    @property
    def run_dir(self) -> Path:
        return self.out / self.dataset / f"{self.variant}-s{self.seed}"

    @property
    def main_dir(self) -> Path:
        return self.out / self.dataset / f"main-s{self.seed}"

    def summary(self) -> dict:
        path = self.run_dir / "summary.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def finished(self) -> bool:
        return self.summary().get("scores", {}).get("selected") is not None

    def running_elsewhere(self) -> bool:
        pid_file = self.run_dir / "RUNNING"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text().strip()), 0)
        except (ValueError, ProcessLookupError, PermissionError):
            return False
        return True

    def ready(self) -> bool:
        return self.variant == "main" or Job(self.dataset, self.seed, "main", self.out, self.preset).finished()

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "uepo.train", "--dataset", self.dataset, "--preset", self.preset,
               "--seed", str(self.seed), "--phases", "offline", "--run_dir", str(self.run_dir),
               *VARIANTS[self.variant]]
        prior = self.reuse_root / self.dataset / self.run_dir.name if self.reuse_root else None
        if (self.run_dir / "config.yaml").exists():
            cmd.append("--resume")
        elif prior is not None and (prior / "config.yaml").exists():
            cmd += ["--reuse_from", str(prior)]  # phases whose inputs did not change are copied, not retrained
        elif self.variant != "main":
            cmd += ["--reuse_from", str(self.main_dir)]
        return cmd


def run_matrix(jobs: list[Job], workers: int) -> int:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive", HF_HUB_OFFLINE="1")
    pending = [j for j in jobs if not j.finished()]
    active: list[tuple[Job, subprocess.Popen, float]] = []
    failed = 0
    while pending or active:
        for job, proc, start in list(active):
            if proc.poll() is not None:
                active.remove((job, proc, start))
                (job.run_dir / "RUNNING").unlink(missing_ok=True)
                ok = proc.returncode == 0 and job.finished()
                failed += not ok
                print(f"[{time.strftime('%H:%M:%S')}] {'done' if ok else 'FAILED'} {job.run_dir} "
                      f"({time.time() - start:.0f} s, exit {proc.returncode})", flush=True)
        elsewhere = [j for j in pending if j.running_elsewhere()]  # they hold a core too
        for job in [j for j in pending if j not in elsewhere and j.finished()]:  # finished elsewhere
            pending.remove(job)
        startable = [j for j in pending if j.ready() and j not in elsewhere]
        while startable and len(active) + len(elsewhere) < workers:
            job = startable.pop(0)
            pending.remove(job)
            job.run_dir.mkdir(parents=True, exist_ok=True)
            cmd = job.command()
            with open(job.run_dir.with_suffix(".log"), "a") as log:  # the child keeps its own handle
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            (job.run_dir / "RUNNING").write_text(str(proc.pid))
            active.append((job, proc, time.time()))
            print(f"[{time.strftime('%H:%M:%S')}] start {job.run_dir}: {' '.join(cmd[1:])}", flush=True)
        if pending and not active and not any(j.running_elsewhere() for j in jobs):
            blocked = [str(j.run_dir) for j in pending]
            print(f"cannot start (their main run failed or is missing): {blocked}", file=sys.stderr)
            return 1
        time.sleep(5)
    return 1 if failed else 0


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
             "best improved sub-policy first:", "",
             "| variant | " + " | ".join(f"seed {s}: regret / ρ / ρ raw" for s in seeds)
             + " | mean regret | best first |", "|---|" + "---|" * (len(seeds) + 2)]
    for variant in VARIANTS:
        recs = {j.seed: run_record(j) for j in ds_jobs if j.variant == variant and j.finished()}
        if not recs or all(r["regret"] is None for r in recs.values()):
            continue

        def cell(r: dict) -> str:
            rho = "—" if r["amq_rank_correlation"] is None else f"{r['amq_rank_correlation']:+.2f}"
            rho_raw = "—" if r["amq_raw_rank_correlation"] is None else f"{r['amq_raw_rank_correlation']:+.2f}"
            return f"{r['regret']:.1f} / {rho} / {rho_raw}" + (" ✓" if r["amq_picks_best_improved"] else "")
        regrets = [r["regret"] for r in recs.values() if r["regret"] is not None]
        firsts = sum(bool(r["amq_picks_best_improved"]) for r in recs.values())
        lines.append(f"| {variant} | " + " | ".join(cell(recs[s]) if s in recs else "—" for s in seeds)
                     + f" | {mean_std(regrets)} | {firsts} of {len(recs)} |")
    return lines


def write_json(jobs: list[Job], path: Path) -> None:
    records = [run_record(j) for j in jobs if j.finished()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"runs": records}, indent=1) + "\n")


def targets_table(jobs: list[Job]) -> list[str]:
    """Issue 8's targets per dataset, main method against gaussian-ensemble, means over finished seeds."""
    def avg(values: list[float]) -> float | None:
        return statistics.mean(values) if values else None

    def fmt(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    lines = ["| dataset | seeds | raw μⁱ: UEPO / Gaussian | selected UEPO | data's own | 1.059 × selected Gaussian "
             "| mean regret | AM-Q ranks best first |", "|---|---|---|---|---|---|---|---|"]
    for dataset in dict.fromkeys(j.dataset for j in jobs):
        recs = {v: [run_record(j) for j in jobs if j.dataset == dataset and j.variant == v and j.finished()]
                for v in ("main", "gaussian-ensemble")}
        main, gauss = recs["main"], recs["gaussian-ensemble"]
        if not main:
            continue
        raw_u = avg([statistics.mean(r["raw"]) for r in main if r["raw"]])
        raw_g = avg([statistics.mean(r["raw"]) for r in gauss if r["raw"]])
        sel_u, sel_g = avg([r["selected"] for r in main]), avg([r["selected"] for r in gauss])
        regret = avg([r["regret"] for r in main if r["regret"] is not None])
        firsts = sum(bool(r["amq_picks_best_improved"]) for r in main)
        target_g = None if sel_g is None else 1.059 * sel_g
        lines.append(f"| {dataset} | {len(main)} | {fmt(raw_u)} / {fmt(raw_g)} | {fmt(sel_u)} "
                     f"| {fmt(main[0]['dataset_episodes'])} | {fmt(target_g)} | {fmt(regret)} "
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
                    t0 = [t0_fit_seconds(Path(s["reused"]["from"])) for s in sums]
                    t0 = [t for t in t0 if t is not None]
                    cell += f" + ({statistics.mean(t0):.0f} T̂0)" if t0 else " + (T̂0)"
                cells.append(cell)
            reused = ", ".join(sums[0].get("reused", {}).get("checkpoints", [])) or "—"
            lines.append(f"| {variant} | {len(sums)} | " + " | ".join(cells) + f" | {total:.0f} | {reused} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--datasets", nargs="+", default=["local/hopper/medium-v0", "local/hopper/medium-replay-v0"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one CPU core each)")
    parser.add_argument("--json", type=Path, default=None, help="report: also write every run's record here")
    parser.add_argument("--reuse_root", type=Path, default=None,
                        help="run: an earlier matrix's --out; each run starts from its namesake's finished phases "
                             "there whose inputs are unchanged (e.g. after a phase-D-only change)")
    args = parser.parse_args()
    # order: seed by seed (a whole seed's table fills first), then dataset by dataset, main run first
    variants = ["main"] + [v for v in args.variants if v != "main"]
    jobs = [Job(d, s, v, args.out, args.preset, args.reuse_root)
            for s in args.seeds for d in args.datasets for v in variants]
    if args.action == "report":
        print(report(jobs))
        if args.json:
            write_json(jobs, args.json)
        return 0
    return run_matrix(jobs, args.workers)


if __name__ == "__main__":
    sys.exit(main())
