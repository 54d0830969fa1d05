"""RESULTS 0s: the registered clauses and the per-run table, from the replays' JSON (scripts/reselect.py).

    python docs/results/fresh1024/report.py > docs/results/fresh1024/report.md
"""

import json
import statistics
from pathlib import Path

HERE = Path(__file__).parent
SEEN = "floor/floor/local/walker2d/medium-v0/main-s3"  # its AM-Q on other states was seen before registering


def load(k: int) -> dict[str, dict]:
    out = {}
    for line in (HERE / "runs.txt").read_text().split():
        tag = "_".join(Path(line).parts[1:])
        path = HERE / "json" / f"k{k}-{tag}.json"
        if path.exists():
            out[line] = json.loads(path.read_text())[0]
    return out


def robot(run: str) -> str:
    return next(r for r in ("halfcheetah", "hopper", "walker2d") if f"/{r}/" in run)


def mean(xs: list[float]) -> float:
    return statistics.mean(xs) if xs else float("nan")


def main() -> None:
    k1024, k256 = load(1024), load(256)
    main_runs = {r: x for r, x in k1024.items() if x["policy"] == "diffusion"}
    print("| run | real scores of the improved sub-policies | gate's pick (real, regret) | fresh 1024 pick | "
          "fresh 256 pick | fresh Ĵ at 1024 |")
    print("|---|---|---|---|---|---|")
    for run, x in k1024.items():
        summary = json.loads((Path(run) / "summary.json").read_text())["scores"]
        y = k256.get(run)
        short = run.split("/runs/")[1]
        print(f"| {short}{' (Gaussian, not counted)' if x['policy'] != 'diffusion' else ''} | "
              f"{', '.join(f'{v:.1f}' for v in summary['improved'])} | {x['run_pick']} ({x['run_score']:.1f}, "
              f"{x['run_regret']:.1f}) | {x['pick']} ({x['pick_score']:.1f}, {x['regret']:.1f}) | "
              + (f"{y['pick']} ({y['pick_score']:.1f}, {y['regret']:.1f})" if y else "—")
              + f" | {', '.join(f'{v:.1f}' for v in x['fresh_amq'])} |")
    runs = list(main_runs.values())
    gate_r, fresh_r = mean([x["run_regret"] for x in runs]), mean([x["regret"] for x in runs])
    others = [x for r, x in main_runs.items() if SEEN not in r]
    gate_o, fresh_o = mean([x["run_regret"] for x in others]), mean([x["regret"] for x in others])
    print(f"\nUEPO runs replayed: {len(runs)} of 22.")
    print(f"- (a) mean regret, gate's pick → fresh 1024: {gate_r:.2f} → {fresh_r:.2f} (Δ {fresh_r - gate_r:+.2f}; "
          f"holds if ≤ −0.5): {'holds' if fresh_r - gate_r <= -0.5 else 'fails'}")
    print(f"- (b) without walker2d medium s3 ({len(others)} runs): {gate_o:.2f} → {fresh_o:.2f} "
          f"(Δ {fresh_o - gate_o:+.2f}; holds if ≤ +0.25): {'holds' if fresh_o - gate_o <= 0.25 else 'fails'}")
    ok_c = True
    for name in ("halfcheetah", "hopper", "walker2d"):
        xs = [x for r, x in main_runs.items() if robot(r) == name]
        d = mean([x["pick_score"] - x["run_score"] for x in xs])
        ok_c &= not d < -1
        print(f"- (c) {name} ({len(xs)} runs): mean selected {mean([x['run_score'] for x in xs]):.2f} → "
              f"{mean([x['pick_score'] for x in xs]):.2f} (Δ {d:+.2f}; holds if ≥ −1)")
    print(f"- (c) {'holds' if ok_c else 'fails'}; picks changed: {sum(x['pick'] != x['run_pick'] for x in runs)} "
          f"of {len(runs)}")
    # the winner's curse, measured: how far each head's Ĵ falls from the gate's states to fresh ones, for the heads
    # the gate accepted (a max over tries) and for those it did not (the raw μ^i, scored once)
    drop = {True: [], False: []}
    for r, x in main_runs.items():
        raw_amq = json.loads((Path(r) / "summary.json").read_text())["scores"]["amq_raw"]
        for g, f, a in zip(x["gate_amq"], x["fresh_amq"], raw_amq, strict=True):
            drop[g != a].append(g - f)
    print(f"- gate's Ĵ − fresh Ĵ: accepted heads {mean(drop[True]):+.2f} (n {len(drop[True])}), heads left raw "
          f"{mean(drop[False]):+.2f} (n {len(drop[False])})")
    both = [r for r in main_runs if r in k256]
    if both:
        print(f"- for information, K = 256 on {len(both)} runs: mean regret {mean([k256[r]['regret'] for r in both]):.2f}"
              f" (gate's {mean([k256[r]['run_regret'] for r in both]):.2f}, fresh 1024 "
              f"{mean([main_runs[r]['regret'] for r in both]):.2f} on the same runs)")


if __name__ == "__main__":
    main()
