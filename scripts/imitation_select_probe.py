"""Does how closely a finished run's sub-policies imitate the data tell the good ones from the bad? (issue 8)

    python scripts/imitation_select_probe.py RUN_DIR [RUN_DIR ...] [--states 2048] [--json out.jsonl]

For each finished run and each of its 2n policies (raw μ^i, then the improved ones, as ``ope_probe`` loads
them): the executed action's mean squared error against the dataset's actions on ``--states`` uniform dataset
states and on as many states of the episodes' first ``--start_steps`` steps (both drawn from a generator of
this probe's own), beside the policy's real score from summary.json. One JSON line per run, with Spearman's ρ
between each error and the real scores of the improved policies, and the regret a pick by the smallest error
would have had. A probe: it decides nothing, and it peeks at no environment (the real scores are the
run's own evaluation).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from ope_probe import append_jsonl, load_finished_run  # scripts/ is sys.path[0] when this runs

from uepo.data import OfflineData
from uepo.evaluate import rank_correlation

PROBE_SEED = 41_000  # apart from seeds.py's streams: the probe must not draw the run's own states


def probe_indices(data: OfflineData, states: int, start_steps: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(PROBE_SEED)
    uniform = torch.randint(0, data.size, (min(states, data.size),), generator=gen)
    step = torch.arange(data.size) - data.episode_start.cpu()
    starts = torch.nonzero(step < start_steps).flatten()
    starts = starts[torch.randperm(starts.numel(), generator=gen)[:states]]
    return {"uniform": uniform, "start": starts}


@torch.no_grad()
def action_errors(act, data: OfflineData, idx: torch.Tensor, history: int) -> float:
    errs = [((act(data.histories(idx[s:s + 1024], history)) - data.actions[idx[s:s + 1024]]) ** 2).mean(-1)
            for s in range(0, idx.numel(), 1024)]
    return float(torch.cat(errs).mean())


def probe(root: Path, states: int, start_steps: int) -> dict:
    fin = load_finished_run(root)
    history = fin.policy.history
    idx = probe_indices(fin.data, states, start_steps)
    errors = {k: [action_errors(a, fin.data, i, history) for a in fin.acts] for k, i in idx.items()}
    n = len(fin.acts) // 2
    improved = fin.real[n:]
    best = max(fin.real)
    out = {"run": str(root), "real": fin.real, "errors": errors, "selected": fin.scores["selected"],
           "regret": best - fin.scores["selected"]}
    for k, e in errors.items():
        out[f"rho_{k}"] = rank_correlation([-x for x in e[n:]], improved)  # > 0: smaller error, better score
        out[f"regret_min_{k}"] = best - improved[min(range(n), key=e[n:].__getitem__)]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--states", type=int, default=2048)
    parser.add_argument("--start_steps", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for root in args.runs:
        row = probe(root, args.states, args.start_steps)
        print(f"{root}: regret {row['regret']:.1f}; by smallest error: uniform {row['regret_min_uniform']:.1f}, "
              f"start {row['regret_min_start']:.1f}; ρ uniform {row['rho_uniform']}, start {row['rho_start']}")
        append_jsonl(args.json, row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
