"""How faithful is T̂0 over an evaluation's horizon, and does more training make it so? (issue 8)

    python scripts/dynamics_probe.py --out runs/dynprobe/hopper-mr.jsonl \
        --variant bench=max_epochs:20,max_updates_per_epoch:100 --variant long=max_epochs:60,max_updates_per_epoch:400 \
        -- --dataset local/hopper/medium-replay-v0 --preset bench --seed 0

Everything after ``--`` is ``python -m uepo.train``'s own flags. For each variant (dynamics-config
fields that replace the preset's), phase C's first fit (T̂0 on real data, the same split and seeds as a
run) is made in a scratch run directory, then measured:
- one-step: the elites' hold-out MSE and Gaussian NLL, as phase C logs them;
- open loop: T̂0 (a random elite per row and step, as AM-Q samples it) replays 512 real episode
  segments with the data's own actions, from the segment's first state; the z-scored state error
  (RMSE over dimensions, averaged over the segments still running in both) at 1, 10, 50, 100 and 200
  steps, the share still running there, and how often the model ends (termination rule) a segment
  that the data continues.
A model that stays near the data under the data's actions is the least AM-Q needs.
One JSON line per variant goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from uepo.cli import parse_args
from uepo.data import load_offline_data
from uepo.phases import PhaseContext
from uepo.phases.dynamics import Dynamics, fit_ensemble, gaussian_nll_raw, holdout_error, real_split
from uepo.runs import Run, seed_everything
from uepo.seeds import phase_seed
from uepo.tasks import termination_fn

HORIZONS = (1, 10, 50, 100, 200)


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, fields = text.partition("=")
    out = {}
    for item in filter(None, fields.split(",")):
        key, _, value = item.partition(":")
        out[key] = type(getattr(parse_args([]).dynamics, key))(value)
    return name, out


@torch.no_grad()
def open_loop(dyn: Dynamics, data, segments: int, length: int, gen: torch.Generator) -> dict:
    """T̂ replaying real segments with the data's actions: state error by step, termination (dis)agreement."""
    room = data.episode_end - torch.arange(data.size)  # steps left in the episode from each index
    starts = torch.nonzero(room >= min(length, 50)).squeeze(1)
    starts = starts[torch.randint(0, starts.numel(), (segments,), generator=gen)]
    steps = torch.minimum(room[starts], torch.tensor(length))  # each segment's own length
    obs = data.obs[starts].clone()
    alive = torch.ones(segments, dtype=torch.bool)
    err: dict[int, list[float]] = {h: [] for h in HORIZONS}
    reach: dict[int, float] = {}  # share of segments still running (in the data and the model) at step h
    model_ended = torch.zeros(segments, dtype=torch.bool)
    for t in range(length):
        live = alive & (t < steps)
        if not bool(live.any()):
            break
        idx = (starts + t).clamp(max=data.size - 1)
        nxt, _, done = dyn.step(obs, data.actions[idx], gen)
        model_ended |= live & done.bool() & (data.terminals[idx] == 0)
        alive &= ~done.bool() | ~live
        obs = torch.where(live[:, None], nxt, obs)
        if t + 1 in err:
            ok = live & alive
            reach[t + 1] = float(ok.float().mean())
            z = (obs[ok] - data.next_obs[idx][ok]) / data.obs_std
            err[t + 1] = z.pow(2).mean(1).sqrt().tolist()
    out = {f"rmse_h{h}": (sum(v) / len(v) if v else None) for h, v in err.items()}
    out.update({f"running_h{h}": reach.get(h, 0.0) for h in HORIZONS})
    out["model_ends_early"] = float(model_ended.float().mean())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--variant", action="append", required=True, help="NAME=field:value,field:value")
    parser.add_argument("--segments", type=int, default=512)
    args, rest = parser.parse_known_args()
    rest = rest[1:] if rest and rest[0] == "--" else rest
    cfg = parse_args(rest)
    torch.set_num_threads(cfg.threads)
    data = load_offline_data(cfg.dataset, cfg.download, cfg.data.action_clip)
    for text in args.variant:
        name, fields = parse_variant(text)
        for key, value in fields.items():
            setattr(cfg.dynamics, key, value)
        seed_everything(phase_seed(cfg.seed, "dynamics"))
        with tempfile.TemporaryDirectory() as scratch:
            run = Run(Path(scratch), resume=False, tensorboard=False)
            ctx = PhaseContext(run, cfg, data, torch.device("cpu"), progress=False)
            gen = ctx.generator("dynamics")
            train_set, holdout = real_split(ctx, gen)  # phase C's split
            start = time.perf_counter()
            model = fit_ensemble(ctx, "T0", train_set, holdout, gen)
            fit_s = time.perf_counter() - start
            run.close()
        h_obs, h_act, h_tgt = holdout.inputs_targets
        dyn = Dynamics(model, termination_fn(data.robot), {}, torch.zeros(1))
        row = {"dataset": cfg.dataset, "seed": cfg.seed, "variant": name, "fields": fields,
               "fit_s": round(fit_s, 1), "holdout_nll": gaussian_nll_raw(model, h_obs, h_act, h_tgt),
               "holdout_error": holdout_error(model, h_obs, h_act, h_tgt, model.out_std),
               **open_loop(dyn, data, args.segments, max(HORIZONS), torch.Generator().manual_seed(cfg.seed))}
        print(json.dumps(row), file=sys.stderr)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
