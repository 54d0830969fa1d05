"""RESULTS 0t: the registered clauses and the per-run tables, from the runs' summary.json.

    python docs/results/pairfresh/report.py [RUNS_ROOT] > docs/results/pairfresh/report.md

Each base run selects on 1024 fresh start states and keeps the gate's Ĵ (``selection.validation.gate``): its
arg max over plausible heads is the default's pick (D), the run's own pick the fresh one. A pair run (start floor
+ fresh) is C where it exists; on hopper and walker2d medium-replay the floor adds no row, so C is the base
run's fresh pick.
"""

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/main/runs/pf")
RUNS = [("local/walker2d/medium-v0", 7), ("local/walker2d/medium-v0", 8), ("local/hopper/medium-v0", 7),
        ("local/halfcheetah/medium-replay-v0", 7), ("local/hopper/medium-replay-v0", 7),
        ("local/walker2d/medium-replay-v0", 7)]
PAIRED = {"local/walker2d/medium-v0", "local/hopper/medium-v0", "local/halfcheetah/medium-replay-v0"}
MARGIN_B = {"local/walker2d/medium-v0": -9.0, "local/hopper/medium-v0": -3.5}  # 0r's rule at n = 2 and n = 1


def summary(kind: str, dataset: str, seed: int) -> dict | None:
    path = ROOT / kind / dataset / f"main-s{seed}" / "summary.json"
    s = json.loads(path.read_text()) if path.exists() else None
    return s if s and "improved" in s.get("scores", {}) else None


def gate_pick(s: dict) -> int:
    """The default's pick: select_sub_policy on the gate's Ĵ (plausible heads only)."""
    gate = s["selection"]["validation"]["gate"]
    ok = [i for i, p in enumerate(gate["plausible"]) if p]
    if not ok:
        raise SystemExit(f"{s['dataset']} s{s['seed']}: no plausible gate Ĵ; the default would fall back to NLL")
    return max(ok, key=lambda i: gate["amq"][i])


def arm(s: dict, pick: int) -> dict:
    sc = s["scores"]
    score = sc["improved"][pick]
    return {"pick": pick, "score": score, "regret": max(sc["raw"] + sc["improved"]) - score, "raw": sc["raw"],
            "improved": sc["improved"], "div": sc["nearest_divergence"], "data": sc["dataset_episodes"],
            "d_time": s["timings_s"].get("D_improve"), "warnings": s.get("warnings", [])}


def mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def main() -> None:
    rows = []
    for dataset, seed in RUNS:
        base = summary("base", dataset, seed)
        if base is None:
            print(f"- {dataset} s{seed}: base run not finished, not judged")
            continue
        d, d_fresh = arm(base, gate_pick(base)), arm(base, base["scores"]["selected_index"])
        pair = summary("pair", dataset, seed) if dataset in PAIRED else base
        if pair is None:
            print(f"- {dataset} s{seed}: pair run not finished, not judged")
            continue
        c = arm(pair, pair["scores"]["selected_index"])
        c_gate = arm(pair, gate_pick(pair)) if dataset in PAIRED else None
        rows.append({"dataset": dataset, "seed": seed, "D": d, "D_fresh": d_fresh, "C": c, "C_gate": c_gate})
    fmt = lambda xs: f"{mean(xs):.1f} ({min(xs):.1f}–{max(xs):.1f})"  # noqa: E731
    print("\n| dataset (seed) | data | D: raw μⁱ mean (range) / improved / pick: real, regret | C: raw / improved / "
          "pick: real, regret | C − D | divergence D → C |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        d, c = r["D"], r["C"]
        print(f"| {r['dataset'].split('/', 1)[1]} ({r['seed']}) | {d['data']:.1f} | {fmt(d['raw'])} / "
              f"{', '.join(f'{v:.1f}' for v in d['improved'])} / {d['pick']}: {d['score']:.1f}, {d['regret']:.1f} | "
              f"{fmt(c['raw'])} / {', '.join(f'{v:.1f}' for v in c['improved'])} / {c['pick']}: {c['score']:.1f}, "
              f"{c['regret']:.1f} | **{c['score'] - d['score']:+.1f}** | {d['div']:.3f} → {c['div']:.3f} |")
    print("\nThe 2 × 2 where the pair has its own run (selected real score; reported, not judged):\n")
    print("| dataset (seed) | default, gate | default, fresh | floor, gate | floor, fresh (C) "
          "| phase D s: base, pair |")
    print("|---|---|---|---|---|---|")
    for r in (r for r in rows if r["C_gate"]):
        print(f"| {r['dataset'].split('/', 1)[1]} ({r['seed']}) | {r['D']['score']:.1f} | "
              f"{r['D_fresh']['score']:.1f} | "
              f"{r['C_gate']['score']:.1f} | {r['C']['score']:.1f} | {r['D']['d_time']:.0f}, {r['C']['d_time']:.0f} |")
    print("\nClauses (on the finished runs):")
    ok = {}
    hc = [r for r in rows if "halfcheetah" in r["dataset"]]
    ok["a"] = all(r["C"]["score"] >= 7.2 for r in hc) if hc else None
    print("- (a) HalfCheetah medium-replay s7, C selected ≥ 7.2: "
          + (f"{hc[0]['C']['score']:.1f}: {'holds' if ok['a'] else 'fails'}" if hc else "not finished"))
    ok["b"] = True
    for dataset, margin in MARGIN_B.items():
        diffs = [r["C"]["score"] - r["D"]["score"] for r in rows if r["dataset"] == dataset]
        if diffs:
            holds = mean(diffs) >= margin
            ok["b"] &= holds
            print(f"- (b) {dataset} (n {len(diffs)}): mean C − D {mean(diffs):+.1f} against {margin}: "
                  f"{'holds' if holds else 'fails'}")
    rd, rc = mean([r["D"]["regret"] for r in rows]), mean([r["C"]["regret"] for r in rows])
    ok["c"] = rc <= rd + 0.25
    print(f"- (c) mean regret over {len(rows)} runs: D {rd:.2f}, C {rc:.2f} (holds if C ≤ D + 0.25): "
          f"{'holds' if ok['c'] else 'fails'}")
    nd = sum(r["D"]["score"] >= r["D"]["data"] for r in rows)
    nc = sum(r["C"]["score"] >= r["C"]["data"] for r in rows)
    ok["d"] = nc >= nd
    print(f"- (d) runs selected ≥ the data's own: D {nd}, C {nc} of {len(rows)}: {'holds' if ok['d'] else 'fails'}")
    print(f"- all four: {'hold' if all(v is not False for v in ok.values()) else 'do not hold'}")
    print(f"- mean selected over all runs: D {mean([r['D']['score'] for r in rows]):.2f}, "
          f"C {mean([r['C']['score'] for r in rows]):.2f}; default + fresh only "
          f"{mean([r['D_fresh']['score'] for r in rows]):.2f}")
    print("\nWarnings (each run's summary.json; a base run's are about its own pick, the fresh one):")
    for r in rows:
        for name, a in (("base run", r["D"]), ("pair run", r["C"])):
            if name == "pair run" and r["C_gate"] is None:
                continue
            for w in a["warnings"]:
                print(f"- {r['dataset']} s{r['seed']} {name}: {w[:300]}")


if __name__ == "__main__":
    main()
