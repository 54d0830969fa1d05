"""Which AM-Q support rule ranks sub-policies as the real env does? Measured on finished runs.

    python scripts/amq_support_probe.py RUN_DIR [RUN_DIR ...] [--ope_states 64 256]

For every raw and improved sub-policy of each run (their real-env scores are in summary.json), AM-Q
is recomputed under several rules for a row that leaves the support (the ensemble disagrees more
than on any real hold-out pair): never stop; stop and count the data's lowest Q (uepo's rule,
``floor``); stop and count 0 (like a fall); stop and hold the row's last Q. Thresholds at 1×, 2×
and 4× that maximum. Prints Spearman's ρ between AM-Q and the real scores over the 2n policies.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from ope_probe import load_finished_run  # this folder's, on sys.path when the script runs

from uepo.evaluate import rank_correlation
from uepo.phases import sample_indices
from uepo.phases.improve import AMQ_NOISE_SEED, Support


@torch.no_grad()
def amq(act, dyn, critics, data, support: Support, starts, threshold: float, after: str, horizon: int) -> float:
    """AM-Q with a row that leaves the support counting ``after``: 'floor', 'zero' or 'hold' (its last Q)."""
    gen = torch.Generator().manual_seed(AMQ_NOISE_SEED)
    hist, rows = starts.clone(), starts.shape[0]
    alive, left = torch.ones(rows, dtype=torch.bool), torch.zeros(rows, dtype=torch.bool)
    last_q, total = torch.zeros(rows), 0.0
    for t in range(horizon):
        obs, a = hist[:, -1], act(hist)
        nxt, _, done, disagreement = dyn.step_with_disagreement(obs, a, gen)
        q = critics.q_value(data.normalize(obs), a).clamp(support.q_low, support.q_high)
        leaving = alive & (disagreement > threshold)
        last_q = torch.where(leaving & (t == 0), q, last_q)  # a row that leaves at once holds its first Q
        left, alive = left | leaving, alive & ~leaving
        last_q = torch.where(alive, q, last_q)
        total += float(q[alive].sum())
        total += float(last_q[left].sum()) if after == "hold" else \
            {"zero": 0.0, "floor": support.q_floor}[after] * int(left.sum())
        alive = alive & ~done
        nxt = torch.maximum(torch.minimum(nxt, support.obs_high), support.obs_low)
        hist = torch.cat([hist[:, 1:], torch.where(alive[:, None], nxt, obs)[:, None]], dim=1)
    return total / (rows * horizon)


def probe(root: Path, ope_states: list[int], start_seeds: list[int], rule_names: list[str] | None) -> None:
    fin = load_finished_run(root)
    cfg, data, critics, dyn, scores, real, acts = (fin.cfg, fin.data, fin.critics, fin.dynamics, fin.scores, fin.real,
                                                   fin.acts)
    n = fin.policy.num_seeds
    support = Support.of(data, dyn, critics, cfg.critics.gamma, cfg.improve.ope_state_margin, 1.0)
    horizon = cfg.improve.ope_horizon or 200
    rules = [("never", math.inf, "zero"), ("1x floor", 1, "floor"), ("1x zero", 1, "zero"), ("1x hold", 1, "hold"),
             ("2x floor", 2, "floor"), ("4x floor", 4, "floor")]
    print(f"\n{root}: real scores raw {[round(x, 1) for x in scores['raw']]} "
          f"improved {[round(x, 1) for x in scores['improved']]}", flush=True)
    rules = [r for r in rules if rule_names is None or r[0] in rule_names]
    for states, start_seed in ((s, k) for s in ope_states for k in start_seeds):
        idx = sample_indices(data.size, states, torch.Generator().manual_seed(cfg.seed * 1000 + 4242 + start_seed))
        starts = data.histories(idx, fin.policy.history)
        for name, factor, after in rules:
            values = [amq(a, dyn, critics, data, support, starts, factor * support.disagreement, after, horizon)
                      for a in acts]
            rho = rank_correlation(values, real)
            rho_text = "—" if rho is None else f"{rho:+.2f}"
            best = int(torch.tensor(values[n:]).argmax()) == int(torch.tensor(real[n:]).argmax())
            print(f"  {states:>4} states (draw {start_seed})  {name:<9} ρ {rho_text:>5}  "
                  f"picks best improved: {best}  AM-Q {[round(v, 1) for v in values]}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--ope_states", type=int, nargs="+", default=[64])
    parser.add_argument("--start_seeds", type=int, nargs="+", default=[0], help="draws of the start states")
    parser.add_argument("--rules", nargs="+", default=None, help="only these rules (e.g. '2x floor' never)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for root in args.runs:
        probe(root, args.ope_states, args.start_seeds, args.rules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
