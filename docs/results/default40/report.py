"""RESULTS 0u: issue 8's targets at today's defaults, from every run that is today's default (see the registration).

    PYTHONPATH=. python docs/results/default40/report.py > docs/results/default40/report.md

Writes docs/results/default40/matrix.json (one record per dataset × variant × seed, the keys of
``uepo.matrix.run_record`` plus ``source``). A UEPO record comes from one of two places:
- a run made at today's default (its own summary.json: 0t's pair runs, 0t's base runs on the two medium-replay
  datasets, this stop's runs);
- a start-floor run of 0r whose selection on 1024 fresh start states was replayed (0s's or this stop's
  ``scripts/reselect.py`` JSON): the run's record with the replay's pick, score, regret and rank correlation.
A Gaussian record comes from a run made here or, for seeds without one, from the JSON of the section that made it.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from uepo.evaluate import rank_correlation
from uepo.matrix import TARGETS, Job, mean_std, run_record, target_margins

RUNS = Path("/work/main/runs")
DOCS = Path(__file__).resolve().parents[1]  # docs/results
REPLAYS = [DOCS / "fresh1024" / "json", DOCS / "default40"]
HM, HMR, WM, WMR = "local/hopper/medium-v0", "local/hopper/medium-replay-v0", "local/walker2d/medium-v0", \
    "local/walker2d/medium-replay-v0"
CM, CMR = "local/halfcheetah/medium-v0", "local/halfcheetah/medium-replay-v0"
# dataset -> seed -> (runs root of a run at today's default, or of a floor run to replay)
UEPO = {
    HM: {0: "floor/floor", 1: "floor/floor", 7: "pf/pair"},
    WM: {3: "floor/floor", 5: "floor/floor", 6: "floor/floor", 7: "pf/pair", 8: "pf/pair"},
    HMR: {0: "d40/main", 3: "d40/main", 7: "pf/base"},
    WMR: {0: "d40/main", 1: "d40/main", 7: "pf/base"},
    CM: {0: "floor/floor", 1: "floor/floor", 2: "d40/main"},  # s2: 0r's run never finished; run here
    CMR: {0: "floor/floor", 1: "floor/floor", 2: "floor/floor", 3: "floor/floor", 7: "pf/pair"},
}
IN_SAMPLE = {(WM, 3), (WM, 5), (WM, 6), (CMR, 0), (CMR, 1), (CMR, 2), (CMR, 3)}  # shaped the floor or the pair
# Gaussian runs of earlier sections, for seeds this stop did not rerun (file under docs/results)
GAUSS_RECORDED = ["matrix-400.json", "matrix-fresh.json", "xg/matrix-m56.json", "cheetah/matrix-eps.json",
                  "pair/matrix-cheetah-gaussian.json", "floor/matrix-base-cheetah.json"]


def replay_of(run_dir: Path) -> dict | None:
    tag = "_".join(run_dir.parts[4:])  # work_main_runs_… as fresh1024's file names, floor_… as this stop's
    for folder in REPLAYS:
        for path in (folder / f"k1024-work_main_runs_{tag}.json", folder / f"reselect-{tag}.json"):
            if path.exists():
                return json.loads(path.read_text())[0]
    return None


def uepo_record(dataset: str, seed: int, root: str) -> dict | None:
    job = Job(dataset, seed, "main", RUNS / root, "bench")
    if not job.finished():
        return None
    rec = run_record(job) | {"source": str(job.run_dir)}
    if root.startswith("floor"):  # 0r's run picked on the gate's values: today's default picks on fresh states
        replay = replay_of(job.run_dir)
        if replay is None:
            return None
        improved = rec["improved"]
        rec |= {"selected": replay["pick_score"], "selected_index": replay["pick"], "regret": replay["regret"],
                "selection_method": "amq (1024 fresh start states, replayed)",
                "amq_rank_correlation": rank_correlation(replay["fresh_amq"], improved),
                "amq_picks_best_improved": replay["pick"] == max(range(len(improved)), key=improved.__getitem__),
                "regret_vs_improved": max(improved) - replay["pick_score"], "regret_vs_raw": None,
                "source": rec["source"] + " + 1024-state replay"}
    return rec


def gaussian_record(dataset: str, seed: int, recorded: dict) -> dict | None:
    job = Job(dataset, seed, "gaussian-ensemble", RUNS / "d40" / "gauss", "bench")
    if job.finished():
        return run_record(job) | {"source": str(job.run_dir)}
    return recorded.get((dataset, seed))


def recorded_gaussians() -> dict:
    out = {}
    for name in GAUSS_RECORDED:
        for r in json.loads((DOCS / name).read_text())["runs"]:
            if r["variant"] == "gaussian-ensemble":
                out.setdefault((r["dataset"], r["seed"]), r | {"source": f"docs/results/{name}"})
    return out


def collect_new_runs() -> None:
    """This stop's runs' summary.json and config.yaml under default40/per-run/ (earlier sections kept theirs)."""
    for run in sorted((RUNS / "d40").glob("*/local/*/*/*-s*")):
        summary = run / "summary.json"
        if summary.exists() and json.loads(summary.read_text()).get("scores", {}).get("selected") is not None:
            dest = DOCS / "default40" / "per-run" / run.relative_to(RUNS / "d40").parent
            dest.mkdir(parents=True, exist_ok=True)
            for name in ("summary.json", "config.yaml"):
                (dest / f"{run.name}-{name}").write_bytes((run / name).read_bytes())


def per_run_table(records: list[dict]) -> list[str]:
    lines = ["| dataset | seed | source | raw μⁱ | improved | pick: real (regret) | ρ | best first | div | "
             "Gaussian: raw mean / selected (source) |", "|---|---|---|---|---|---|---|---|---|---|"]
    gauss = {(r["dataset"], r["seed"]): r for r in records if r["variant"] == "gaussian-ensemble"}
    for r in (r for r in records if r["variant"] == "main"):
        g = gauss.get((r["dataset"], r["seed"]))
        gcell = "—" if g is None else (f"{statistics.mean(g['raw']):.1f} / {g['selected']:.1f} "
                                       f"({g['source'].split('/runs/')[-1]}, {str(g.get('git_commit'))[:7]})")
        rho = "—" if r["amq_rank_correlation"] is None else f"{r['amq_rank_correlation']:+.2f}"
        tag = " (in sample)" if (r["dataset"], r["seed"]) in IN_SAMPLE else ""
        lines.append(f"| {r['dataset'].split('/', 1)[1]} | {r['seed']}{tag} | {r['source'].split('/runs/')[-1]} "
                     f"| {' / '.join(f'{x:.1f}' for x in r['raw'])} | {' / '.join(f'{x:.1f}' for x in r['improved'])} "
                     f"| {r['selected_index']}: {r['selected']:.1f} ({r['regret']:.1f}) | {rho} "
                     f"| {'✓' if r['amq_picks_best_improved'] else ''} | {r['nearest_divergence']:.3f} | {gcell} |")
    return lines


def targets_table(records: list[dict], title: str, keep) -> list[str]:
    lines = [f"**{title}**", "", "| dataset | seeds (UEPO; Gaussian) | raw μⁱ: UEPO / Gaussian | selected UEPO | "
             "selected Gaussian | data | regret | best first | " + " | ".join(TARGETS) + " |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    met = total = 0
    for dataset in UEPO:
        main = [r for r in records if r["dataset"] == dataset and r["variant"] == "main" and keep(r)]
        gauss = [r for r in records if r["dataset"] == dataset and r["variant"] == "gaussian-ensemble"
                 and (r["dataset"], r["seed"]) in {(m["dataset"], m["seed"]) for m in main}]
        if not main or not gauss:
            continue
        cells = []
        for margin in target_margins(main, gauss):  # ≥ 0: met
            met, total = met + (margin >= 0), total + 1
            cells.append("**met**" if margin >= 0 else f"missed by {-margin:.{1 if -margin >= 0.1 else 2}f}")
        firsts = sum(bool(r["amq_picks_best_improved"]) for r in main)
        raw = [mean_std([statistics.mean(r["raw"]) for r in recs]) for recs in (main, gauss)]
        lines.append(f"| {dataset.split('/', 1)[1]} | {len(main)}; {len(gauss)} | {raw[0]} / {raw[1]} "
                     f"| {mean_std([r['selected'] for r in main])} | {mean_std([r['selected'] for r in gauss])} "
                     f"| {main[0]['dataset_episodes']:.1f} | {mean_std([r['regret'] for r in main])} "
                     f"| {firsts} of {len(main)} | " + " | ".join(cells) + " |")
    return lines + ["", f"Met: {met} of {total}.", ""]


def main() -> None:
    recorded = recorded_gaussians()
    records, missing = [], []
    for dataset, seeds in UEPO.items():
        for seed, root in seeds.items():
            u, g = uepo_record(dataset, seed, root), gaussian_record(dataset, seed, recorded)
            missing += [f"{dataset} s{seed} {kind}" for kind, r in (("UEPO", u), ("Gaussian", g)) if r is None]
            records += [r for r in (u, g) if r is not None]
    collect_new_runs()
    (DOCS / "default40" / "matrix.json").write_text(json.dumps({"runs": records}, indent=1) + "\n")
    print("\n".join(targets_table(records, "All seeds", lambda r: True)))
    print("\n".join(targets_table(records, "Out of sample only (no seed that shaped the floor or the pair)",
                                  lambda r: (r["dataset"], r["seed"]) not in IN_SAMPLE)))
    print("\n".join(per_run_table(records)))
    regrets = [r["regret"] for r in records if r["variant"] == "main"]
    print(f"\nMean regret over {len(regrets)} UEPO runs: {statistics.mean(regrets):.2f}; selected ≥ data in "
          f"{sum(r['selected'] >= r['dataset_episodes'] for r in records if r['variant'] == 'main')} of "
          f"{len(regrets)}.")
    if missing:
        print("\nNot (yet) available: " + ", ".join(missing))


if __name__ == "__main__":
    main()
