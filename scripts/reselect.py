"""Phase D's selection replayed on finished runs with ``--improve.validate_states K``.

    python scripts/reselect.py RUN_DIR [RUN_DIR ...] [--states 256] [--json out.json]

The same code as a run with that setting (``held_out_starts``, ``fresh_amq``, ``select_sub_policy``) on the
run's own accepted BPPO heads, critics and T̂: the gate and BPPO do not depend on the setting, so the pick
is the one such a run makes. Every improved sub-policy's real score is in the run's summary.json, so
each pick's real score, its regret and a random pick's are printed beside the run's own pick.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from ope_probe import load_finished_run  # scripts/ is sys.path[0] when this runs

from uepo.evaluate import uniform_regret
from uepo.phases.improve import amq_scorer, amq_setting, fresh_amq, held_out_starts, select_sub_policy


def reselect(root: Path, states: int) -> dict:
    fin = load_finished_run(root)
    data, policy, summary = fin.data, fin.improved, json.loads((root / "summary.json").read_text())
    cfg = copy.deepcopy(fin.cfg.improve)
    cfg.validate_states = states
    support, horizon = amq_setting(data, fin.dynamics, fin.critics, fin.cfg)
    score = amq_scorer(policy, fin.dynamics, fin.critics, data, horizon, support)
    held_out = held_out_starts(data, cfg, fin.cfg.seed, policy.history)
    scores, selection = fin.scores, summary["selection"]
    n = policy.num_seeds
    best = {"heads": [h.state_dict() for h in policy.heads], "amq": list(scores["amq_selected_candidates"]),
            "plausible": list(selection.get("amq_plausible", [True] * n)), "rows": [None] * n}
    gate = fresh_amq(policy, best, lambda i, head: score(i, head, held_out))
    pick = select_sub_policy(best["amq"], best["plausible"], [0.0] * n)["selected"]
    improved, top = scores["improved"], max(scores["raw"] + scores["improved"])
    return {"run": str(root), "policy": fin.cfg.policy, "states": held_out.shape[0], "gate_amq": gate["amq"],
            "fresh_amq": best["amq"], "pick": pick, "pick_score": improved[pick], "regret": top - improved[pick],
            "run_pick": scores["selected_index"], "run_score": improved[scores["selected_index"]],
            "run_regret": top - improved[scores["selected_index"]],
            "regret_uniform": uniform_regret(scores["raw"], improved)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--states", type=int, default=256, help="--improve.validate_states to replay")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for root in args.runs:
        r = reselect(root, args.states)
        results.append(r)
        print(f"{root}: fresh pick {r['pick']} ({r['pick_score']:.1f}, regret {r['regret']:.1f}) | gate's pick "
              f"{r['run_pick']} ({r['run_score']:.1f}, regret {r['run_regret']:.1f}) | a random pick's regret "
              f"{r['regret_uniform']:.1f} | fresh Ĵ {[round(v, 1) for v in r['fresh_amq']]} gate's "
              f"{[round(v, 1) for v in r['gate_amq']]}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    k = len(results)
    print(f"\nmean over {k} runs: fresh pick {sum(r['pick_score'] for r in results) / k:.2f} (regret "
          f"{sum(r['regret'] for r in results) / k:.2f}) | gate's pick {sum(r['run_score'] for r in results) / k:.2f} "
          f"(regret {sum(r['run_regret'] for r in results) / k:.2f}) | random pick's regret "
          f"{sum(r['regret_uniform'] for r in results) / k:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
