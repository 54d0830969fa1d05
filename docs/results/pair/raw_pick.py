"""RESULTS 0p's replay (decides nothing): what each run would score if phase D's heads were left out and AM-Q
picked among the raw sub-policies, from the runs' summary.json (no new episodes). run from /work/main."""

import json
import statistics
from pathlib import Path

RUNS = Path("runs")
CASES = [("halfcheetah/medium-v0", 2), ("halfcheetah/medium-replay-v0", 2)] + [
    (f"{robot}/{d}", s) for s in (3, 4) for robot in ("hopper", "walker2d") for d in ("medium-v0", "medium-replay-v0")]


def scores(kind: str, dataset: str, seed: int) -> tuple[float, float, float, float]:
    base = RUNS / "pair" if kind == "pair" else RUNS / ("cheetah-xg" if "cheetah" in dataset else "xg")
    s = json.loads((base / "local" / dataset / f"main-s{seed}" / "summary.json").read_text())["scores"]
    by_amq = max(range(len(s["raw"])), key=lambda i: s["amq_raw"][i])
    return s["selected"], s["raw"][by_amq], max(s["raw"]), statistics.fmean(s["raw"])


print("| dataset (seed) | default: selected / raw by AM-Q / best raw | pair: selected / raw by AM-Q / best raw |")
print("|---|---|---|")
totals = {"default": [], "pair": []}
for dataset, seed in CASES:
    cells = []
    for kind in totals:
        row = scores(kind, dataset, seed)
        totals[kind].append(row)
        cells.append(" / ".join(f"{v:.1f}" for v in row[:3]))
    print(f"| {dataset} ({seed}) | {cells[0]} | {cells[1]} |")
means = {k: [statistics.fmean(r[j] for r in v) for j in range(4)] for k, v in totals.items()}
print(f"| **mean of {len(CASES)}** | " + " | ".join(" / ".join(f"{m:.1f}" for m in means[k][:3]) for k in totals) + " |")
