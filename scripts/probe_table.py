"""Tabulate scripts/imitation_probe.py results: python scripts/probe_table.py docs/results/probe/*.jsonl"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(paths: list[str]) -> int:
    rows: dict[tuple, dict] = {}
    for path in paths:
        for line in open(path):
            r = json.loads(line)
            flags = " ".join(r["overrides"][6:]) or "—"
            rows[(r["dataset"], flags, r["temperature"])] = r  # a repeated evaluation replaces the earlier
    by_dataset: dict[str, list] = defaultdict(list)
    for (dataset, flags, t), r in rows.items():
        by_dataset[dataset].append((flags, t, r))
    for dataset in sorted(by_dataset):
        print(f"\n#### {dataset}\n")
        print("| trained with | sampled at t | raw μⁱ (10 episodes each) | mean | div | first-action MSE |")
        print("|---|---|---|---|---|---|")
        for flags, t, r in sorted(by_dataset[dataset], key=lambda x: (x[0], -(x[1] if x[1] is not None else 9))):
            mse = sum(r["first_action_mse"]) / len(r["first_action_mse"])
            div = r.get("nearest_divergence")
            print(f"| {flags} | {'—' if t is None else t} | {' / '.join(f'{x:.1f}' for x in r['raw'])} "
                  f"| **{r['raw_mean']:.1f}** | {'—' if div is None else f'{abs(div):.2f}'} | {mse:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
