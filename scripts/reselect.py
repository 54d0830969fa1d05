"""Phase D's selection replayed on finished runs: ``--improve.validate_states K``, ``--selection amq-topk-online``
or ``--selection amq-gain-penalty``.

    python scripts/reselect.py RUN_DIR [RUN_DIR ...] [--states 256] [--json out.json]
    python scripts/reselect.py RUN_DIR [RUN_DIR ...] --topk 2 --episodes 3 [--with_raw] [--json out.json]
    python scripts/reselect.py RUN_DIR [RUN_DIR ...] --gain_penalty 1 [--json out.json]

With ``--gain_penalty p`` the pick is ``gain_penalized``'s argmax on the run's own Ĵ_raw and accepted Ĵ (from
summary.json; nothing is rerun), as a run with ``--selection amq-gain-penalty --gain_penalty p`` picks.

With ``--topk`` the shortlist is the run's own AM-Q (the gate's), top k, and each candidate plays
``--episodes`` real episodes from ``seeds.selection_seed`` (``select_with_episodes``'s; disjoint from the
evaluation's): the pick a run with ``--selection amq-topk-online --improve.select_topk k`` makes.
``--with_raw`` also shortlists the raw μ^i (their AM-Q from the same gate states), which a run does not.

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

from uepo import seeds
from uepo.cli import run_config
from uepo.data import load_offline_data
from uepo.evaluate import evaluate_policy, uniform_regret
from uepo.phases.improve import amq_scorer, amq_setting, fresh_amq, gain_penalized, held_out_starts, select_sub_policy
from uepo.policy import MultiSeedPolicy
from uepo.train import top_by_amq


def pick_regrets(scores: dict, pick: int, real: list[float] | None = None) -> dict:
    """A replayed pick beside the run's own and a random one's: real-env scores and regrets (best real score
    over raw and improved sub-policies − the pick's). ``real`` indexes the candidates (default: the improved)."""
    real = scores["improved"] if real is None else real
    top, run_pick = max(scores["raw"] + scores["improved"]), scores["selected_index"]
    return {"pick": pick, "pick_score": real[pick], "regret": top - real[pick], "run_pick": run_pick,
            "run_score": real[run_pick], "run_regret": top - real[run_pick],
            "regret_uniform": uniform_regret(scores["raw"], scores["improved"])}


def reselect(root: Path, states: int, t0_view: Path | None = None) -> dict:
    fin = load_finished_run(root, t0_view)
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
    return {"run": str(root), "policy": fin.cfg.policy, "states": held_out.shape[0], "gate_amq": gate["amq"],
            "fresh_amq": best["amq"], **pick_regrets(scores, pick)}


def reselect_online(root: Path, k: int, episodes: int, with_raw: bool) -> dict:
    """``amq-topk-online``'s pick on a finished run; candidates i < n are improved, n + i the raw μ^i."""
    cfg, summary = run_config(root), json.loads((root / "summary.json").read_text())
    data = load_offline_data(cfg.dataset)
    policy = MultiSeedPolicy.load(root / "checkpoints" / "offline.pt")
    scores, n = summary["scores"], policy.num_seeds
    amq = list(scores["amq_selected_candidates"]) + (list(scores["amq_raw"]) if with_raw else [])
    ok = list(summary["selection"].get("amq_plausible", [True] * n))
    ok += list(summary["selection"].get("amq_raw_plausible", [True] * n)) if with_raw else []
    shortlist = top_by_amq(amq, ok, k) or [scores["selected_index"]]
    returns = {c: evaluate_policy(policy, data.env_spec, c % n, raw=c >= n, episodes=episodes,
                                  seed=seeds.selection_seed(cfg.seed), dataset_id=data.dataset_id,
                                  ref_min_score=data.ref_min_score, ref_max_score=data.ref_max_score)["return_mean"]
               for c in shortlist}
    pick = max(shortlist, key=lambda c: returns[c])
    return {"run": str(root), "policy": cfg.policy, "topk": k, "episodes": episodes, "with_raw": with_raw,
            "shortlist": shortlist, "returns": [returns[c] for c in shortlist],
            **pick_regrets(scores, pick, scores["improved"] + scores["raw"])}  # indexed like the candidates


def reselect_gain_penalty(root: Path, penalty: float) -> dict:
    """``amq-gain-penalty``'s pick on a finished run, from its summary.json alone."""
    summary = json.loads((root / "summary.json").read_text())
    scores, selection = summary["scores"], summary["selection"]
    n = len(scores["amq_raw"])
    best = {"amq": scores["amq_selected_candidates"], "plausible": selection.get("amq_plausible", [True] * n),
            "rows": [None] * n}
    ranking, ok, _ = gain_penalized(scores["amq_raw"], selection.get("amq_raw_plausible", [True] * n), [None] * n,
                                    best, penalty, paired=False)
    pick = select_sub_policy(ranking, ok, [0.0] * n)["selected"]
    return {"run": str(root), "policy": summary.get("policy"), "gain_penalty": penalty, "ranking": ranking,
            **pick_regrets(scores, pick)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--states", type=int, default=256, help="--improve.validate_states to replay")
    parser.add_argument("--topk", type=int, default=0, help="replay amq-topk-online with this k instead")
    parser.add_argument("--episodes", type=int, default=3, help="--topk: real episodes per candidate")
    parser.add_argument("--with_raw", action="store_true", help="--topk: shortlist the raw μ^i too")
    parser.add_argument("--gain_penalty", type=float, default=None,
                        help="replay amq-gain-penalty with this p instead (from summary.json only)")
    parser.add_argument("--t0_views", type=Path, default=None,
                        help="select on T̂0 (fitted on real data alone) instead of T̂: a folder for the runs' views")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for root in args.runs:
        if args.topk:
            r = reselect_online(root, args.topk, args.episodes, args.with_raw)
            line, extra = f"top-{args.topk} pick", f" of {r['shortlist']}"
        elif args.gain_penalty is not None:
            r = reselect_gain_penalty(root, args.gain_penalty)
            line, extra = "gain-penalty pick", ""
        else:
            view = args.t0_views / "_".join(root.resolve().parts[-4:]) if args.t0_views else None
            r = reselect(root, args.states, view) | {"dynamics": "T0" if view else "T"}
            line, extra = "fresh pick", ""
        results.append(r)
        print(f"{root}: {line} {r['pick']} ({r['pick_score']:.1f}, regret {r['regret']:.1f}){extra} | AM-Q's "
              f"(gate's) pick {r['run_pick']} ({r['run_score']:.1f}, regret {r['run_regret']:.1f}) | a random "
              f"pick's regret {r['regret_uniform']:.1f}", flush=True)
        if "fresh_amq" in r:
            print(f"  fresh Ĵ {[round(v, 1) for v in r['fresh_amq']]} gate's {[round(v, 1) for v in r['gate_amq']]}")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
    name = (f"top-{args.topk} pick" if args.topk else "gain-penalty pick" if args.gain_penalty is not None
            else "fresh pick")
    groups: dict[str, list[dict]] = {}
    for r in results:  # per policy kind and dataset (a run's summary.json names both), then over all
        summary = json.loads((Path(r["run"]) / "summary.json").read_text())
        groups.setdefault(f"{summary.get('policy')} {summary['dataset']['dataset_id']}", []).append(r)
    if len(groups) > 1:
        groups["all"] = results
    print()
    for label, rs in groups.items():
        k = len(rs)

        def mean(key: str, rs: list[dict] = rs, k: int = k) -> float:
            return sum(r[key] for r in rs) / k

        print(f"mean over {k} runs, {label}: {name} {mean('pick_score'):.2f} (regret {mean('regret'):.2f}) | AM-Q's "
              f"(gate's) pick {mean('run_score'):.2f} (regret {mean('run_regret'):.2f}) | random pick's regret "
              f"{mean('regret_uniform'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
