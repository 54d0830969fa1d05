"""RESULTS 0q: how often a change with no effect fails a registered (b) clause ("on no dataset is the mean selected
score over its seeds more than MARGIN below the default's"), from the seed-to-seed sd of the default's selected
score in 0l's x̂₀ + gate runs (normal approximation; both arms with SEEDS seeds). Run from the repository root."""

import glob
import json
import math
import statistics

MARGIN, SEEDS = 2.0, 2
DATASETS = ["hopper/medium-v0", "hopper/medium-replay-v0", "walker2d/medium-v0", "walker2d/medium-replay-v0"]

keep_all = 1.0
for ds in DATASETS:
    files = sorted(glob.glob(f"docs/results/xg/per-run/local/{ds}/main-s*-summary.json"))
    selected = [json.load(open(f))["scores"]["selected"] for f in files]
    sd = statistics.stdev(selected)
    sd_diff = sd * math.sqrt(2 / SEEDS)
    fail = 0.5 * math.erfc(MARGIN / sd_diff / math.sqrt(2))
    keep_all *= 1 - fail
    print(f"{ds:28s} seeds {len(selected)}: {', '.join(f'{x:.1f}' for x in selected)}  sd {sd:.2f}  "
          f"P(no-effect change fails) {fail:.3f}")
print(f"P(fails on at least one of the four) {1 - keep_all:.2f}")
