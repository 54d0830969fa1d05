"""The comparison matrix, now ``python -m uepo.sweep`` (Ray tasks); this alias keeps the older commands working.

    python scripts/bench_matrix.py run --datasets local/hopper/medium-v0 local/hopper/medium-replay-v0 \\
        --seeds 0 1 2 --workers 2
    python scripts/bench_matrix.py report > table.md

The same flags as ``python -m uepo.sweep`` (``--workers`` is its ``--max_parallel``); see uepo/sweep.py
for the scheduling and uepo/matrix.py for the job model and the tables.
"""

from __future__ import annotations

import sys

from uepo.matrix import Job, report, write_json
from uepo.sweep import main, run_matrix

__all__ = ["Job", "main", "report", "run_matrix", "write_json"]

if __name__ == "__main__":
    sys.exit(main())
