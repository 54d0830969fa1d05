"""``python -m uepo.train``: the offline pipeline, phases A–D of SPEC §3, then evaluation.

    python -m uepo.train --dataset local/hopper/medium-v0 --preset bench --seed 0 --out runs

A → IQL critics, B → multi-seed diffusion pretraining (or ``--policy gaussian-ensemble``),
C → dynamics with diffusion augmentation, D → BPPO + AM-Q + selection; then deterministic
episodes of each raw μ^i and of the selected policy in the dataset's env; then E → online PPO
fine-tuning (``--phases offline|online|all``). The run directory gets config.yaml, metrics.csv +
TensorBoard events, checkpoints/ (resumable: ``--resume RUN_DIR``), plots/*.png, summary.json,
checkpoints/offline.pt (docs/CONTRACTS.md) and checkpoints/online.pt. Ablations can start from
the main run's finished phases with ``--reuse_from RUN_DIR`` (uepo/reuse.py).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from uepo import distributed, ops, seeds
from uepo.cli import parse_args
from uepo.config import Config, load_run_yaml, preset, save_yaml, to_dict, validate
from uepo.data import DatasetError, OfflineData, load_offline_data
from uepo.evaluate import evaluate_policy, evaluation_episode_scores, score_warnings, selection_report
from uepo.phases import PhaseContext
from uepo.phases.critics import train_critics
from uepo.phases.dynamics import augmentation_warnings, train_dynamics
from uepo.phases.improve import Improved, improve
from uepo.phases.online import run_online
from uepo.phases.pretrain import pretrain
from uepo.plots import make_plots
from uepo.reuse import reuse_phases
from uepo.runs import NonFiniteLossError, Run, provenance, seed_everything

PHASES_RUN = ["A critics (IQL)", "B multi-seed pretraining", "C dynamics + augmentation",
              "D improvement + selection", "evaluation"]
PHASE_ONLINE = "E online fine-tuning"
ALL_PHASES = [*PHASES_RUN, PHASE_ONLINE]


def run_directory(cfg: Config) -> Path:
    if cfg.run_dir:
        return Path(cfg.run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return Path(cfg.out) / cfg.dataset / f"{stamp}-{cfg.seed}"


def check_resume(cfg: Config, root: Path) -> None:
    """A resumed run must use the config it started with (else the result is neither run)."""
    saved_path = root / "config.yaml"
    if not saved_path.exists():
        raise FileNotFoundError(f"--resume: {saved_path} does not exist; pass the run_dir of an earlier run")
    saved, current = load_run_yaml(saved_path), to_dict(cfg)
    ignore = {"resume", "run_dir", "out", "phases"}
    defaults = to_dict(preset(cfg.preset))  # what a field the run predates would have been
    diffs = []

    def compare(label: str, saved_value: object, value: object, default: object, present: bool) -> None:
        if not present and value == default:
            return  # a field added after the run started, left at its preset's value
        if saved_value != value:
            diffs.append(f"{label}: {saved_value!r} -> {value!r}")

    for key, value in current.items():
        if key in ignore:
            continue
        if isinstance(value, dict):  # a config section: the same rule field by field
            section = saved.get(key, {})
            for k, v in value.items():
                compare(f"{key}.{k}", section.get(k), v, defaults[key].get(k), k in section)
        else:
            compare(key, saved.get(key), value, defaults.get(key), key in saved)
    if diffs:
        raise ValueError("--resume with a different config than the run started with: " + "; ".join(diffs)
                         + ". Resume with the same flags, or start a new run")


def _episode_settings(ctx: PhaseContext, episodes: int, first_seed: int) -> dict:
    data = ctx.data
    if data.env_spec is None:
        raise DatasetError(f"dataset {data.dataset_id} records no environment, so it cannot be evaluated; "
                           "set --improve.eval_episodes 0")
    return dict(episodes=episodes, seed=first_seed, dataset_id=data.dataset_id,
                ref_min_score=data.ref_min_score, ref_max_score=data.ref_max_score)


def evaluate_all(ctx: PhaseContext, policy, selected: int) -> dict:
    """Real-env episodes of each raw μ^i, each improved sub-policy and the selected one (one of those)."""
    cfg, env = ctx.cfg.improve, ctx.data.env_spec
    results: dict = {}
    if cfg.eval_episodes <= 0:
        return results
    common = _episode_settings(ctx, cfg.eval_episodes, seeds.evaluation_seed(ctx.cfg.seed))
    if cfg.eval_raw:
        results["raw"] = [evaluate_policy(policy, env, i, raw=True, **common) for i in range(policy.num_seeds)]
    if cfg.eval_improved:
        results["improved"] = [evaluate_policy(policy, env, i, **common) for i in range(policy.num_seeds)]
        results["selected"] = results["improved"][selected]  # the same deterministic episodes
    else:
        results["selected"] = evaluate_policy(policy, env, selected, **common)
    return results


def top_by_amq(amq: list[float], plausible: list[bool], k: int) -> list[int]:
    """The k plausible candidates with the highest AM-Q, best first: ``amq-topk-online``'s shortlist."""
    return sorted((i for i in range(len(amq)) if plausible[i]), key=lambda i: -amq[i])[:k]


def select_with_episodes(ctx: PhaseContext, improved: Improved) -> None:
    """Uni-O4's variant (``--selection amq-topk-online``): the top-k plausible sub-policies by AM-Q each
    play a few real episodes (seeds disjoint from the evaluation's) and the best mean return wins."""
    cfg = ctx.cfg.improve
    ok = improved.selection.get("amq_plausible", [True] * len(improved.amq_best))
    candidates = top_by_amq(improved.amq_best, ok, cfg.select_topk) or [improved.selected]
    common = _episode_settings(ctx, cfg.select_episodes, seeds.selection_seed(ctx.cfg.seed))
    returns = {i: evaluate_policy(improved.policy, ctx.data.env_spec, i, **common)["return_mean"]
               for i in candidates}
    improved.selected = max(candidates, key=lambda i: returns[i])
    improved.selection.update(selected=improved.selected, method="amq-topk-online", candidates=candidates,
                              candidate_returns=[returns[i] for i in candidates],
                              note="peeks at the real env: not a purely offline selection")


def selection_table(scores: dict, selection: dict, episodes: int) -> str:
    """The run's last lines: every candidate's real score and AM-Q beside the dataset's own score."""
    def fmt(v: float | None, spec: str = ".1f") -> str:
        return "—" if v is None else format(v, spec)

    raw, improved = scores.get("raw") or [], scores.get("improved") or []
    n = len(scores["amq_raw"])
    lines = [f"{'':<22}{'real score':>11}{'AM-Q':>11}",
             f"{'dataset own episodes':<22}{fmt(scores.get('dataset_episodes')):>11}"]
    for i in range(n):
        mark = " <- selected" if i == scores["selected_index"] else ""
        lines.append(f"{f'raw μ^{i}':<22}{fmt(raw[i] if raw else None):>11}{fmt(scores['amq_raw'][i], '.4g'):>11}")
        lines.append(f"{f'improved {i}':<22}{fmt(improved[i] if improved else None):>11}"
                     f"{fmt(scores['amq_selected_candidates'][i], '.4g'):>11}{mark}")
    report = scores.get("selection_report", {})
    lines.append(f"selected sub-policy {scores['selected_index']} ({selection.get('method', 'amq')}): "
                 f"{fmt(scores.get('selected'))} over {episodes} episodes; regret {fmt(report.get('regret'))} "
                 f"(a random pick's: {fmt(report.get('regret_uniform'))}; a perfect pick's, from the "
                 f"evaluation's noise: {fmt(report.get('regret_floor'))}), "
                 f"AM-Q rank correlation {fmt(report.get('amq_rank_correlation'), '.2f')} "
                 f"(raw {fmt(report.get('amq_raw_rank_correlation'), '.2f')})")
    if "ranking" in selection:
        lines.append(f"ranked by Ĵ_raw − {selection['gain_penalty']:g}·(Ĵ − Ĵ_raw) (--selection amq-gain-penalty): "
                     f"{[round(v, 1) for v in selection['ranking']]}")
    if "validation" in selection:
        lines.append(f"the improved sub-policies' AM-Q is from {selection['validation']['states']} fresh start states "
                     "(--improve.validate_states), the raw ones' from the BPPO gate's")
    if selection.get("runner_up_z") is not None:
        z = selection["runner_up_z"]
        lines.append(f"AM-Q puts it {z:.1f} paired standard errors above sub-policy {selection['runner_up']}"
                     + (" (under 2: within AM-Q's start-state noise)" if z < 2 else ""))
    return "\n".join(lines)


def run_offline(ctx: PhaseContext, done: list[str]) -> None:
    """Phases A–D, the offline artefact checkpoints/offline.pt, and the offline evaluation."""
    run, cfg, data = ctx.run, ctx.cfg, ctx.data
    try:
        with run.timer("A_critics"):
            critics = train_critics(ctx)
        done.append(PHASES_RUN[0])
        with run.timer("B_pretrain"):
            pre = pretrain(ctx)
        done.append(PHASES_RUN[1])
        with run.timer("C_dynamics"):
            dynamics = train_dynamics(ctx, pre.policy)
        done.append(PHASES_RUN[2])
        with run.timer("D_improve"):
            improved = improve(ctx, pre.policy, critics, dynamics)
            if cfg.improve.selection == "amq-topk-online":
                select_with_episodes(ctx, improved)
        done.append(PHASES_RUN[3])
    except NonFiniteLossError as exc:
        run.update_summary(phases_run=done, error=str(exc))
        raise
    finally:
        run.update_summary(phases_run=list(done))

    offline = {
        "policy": improved.policy.state(),
        "selected": improved.selected,
        "value": {"state_dict": critics.v.state_dict(),
                  "config": {"obs_dim": data.obs_dim, "hidden": cfg.critics.hidden,
                             "layers": cfg.critics.layers}},
        "dataset": data.provenance,
        "env_id": data.env_id,
    }
    run.save_checkpoint("offline", offline)
    if not ctx.world.main:  # the other ranks' share of the work ends with phase D
        return

    with run.timer("evaluation"):
        evals = evaluate_all(ctx, improved.policy, improved.selected)
    done.append(PHASES_RUN[4])
    raw = [r["score_mean"] for r in evals["raw"]] if "raw" in evals else None
    improved_scores = [r["score_mean"] for r in evals["improved"]] if "improved" in evals else None
    scores = {
        "label": f"{data.dataset_id} (local/Minari data; not comparable with D4RL-v2)",
        "dataset_episodes": data.provenance.get("episode_score_mean"),
        "dataset_episodes_std": data.provenance.get("episode_score_std"),
        "selected_index": improved.selected,
        "selection_method": improved.selection.get("method", "amq"),
        "amq_raw": improved.amq_raw,
        "amq_selected_candidates": improved.amq_best,
        "amq_plausible": improved.selection.get("amq_plausible"),
        "raw": raw or [],
        "improved": improved_scores,
        "selected": evals.get("selected", {}).get("score_mean"),
        "nearest_divergence": pre.metrics.get("sub_policy_divergence"),
    }
    if evals and None not in (raw or []) + (improved_scores or []):
        scores["selection_report"] = selection_report(improved.selected, improved.amq_raw, improved.amq_best,
                                                      raw, improved_scores, evaluation_episode_scores(evals))
    warnings = offline_warnings(scores, improved.selection, pre.metrics, dynamics.metrics)
    run.update_summary(scores=scores, evaluation=evals, phases_run=done, pretrain=pre.metrics,
                       dynamics=dynamics.metrics, selection=improved.selection, warnings=warnings)
    if evals:
        print(f"uepo.train: {data.dataset_id} [{data.env_id}], normalised scores (local data: not comparable "
              "with D4RL tables)\n" + selection_table(scores, improved.selection, cfg.improve.eval_episodes),
              file=sys.stderr)
    for message in warnings:
        print(f"uepo.train: WARNING: {message}", file=sys.stderr)


def offline_warnings(scores: dict, selection: dict, pretrain_metrics: dict, dynamics_metrics: dict) -> list[str]:
    """The offline result's warnings, in the order they are printed: T̂'s augmentation, phase D's selection,
    then the real scores' (with phase B's share of episode-start states for the start-floor hint)."""
    return (augmentation_warnings(dynamics_metrics) + selection.get("warnings", [])
            + score_warnings(scores, pretrain_metrics.get("start_natural_share"),
                             pretrain_metrics.get("start_rows_per_batch", 0.0)))


def run_online_phase(ctx: PhaseContext, done: list[str]) -> None:
    """Phase E from checkpoints/offline.pt (resumes from checkpoints/online.pt when present)."""
    run, cfg, data = ctx.run, ctx.cfg, ctx.data
    offline = run.load_checkpoint("offline")
    if offline is None:
        raise UsageError(f"{run.checkpoints / 'offline.pt'} does not exist: run the offline phases first "
                         "(--phases offline or all)")
    try:
        summary = run_online(run, cfg.online, offline, seed=cfg.seed, env=data.env_spec or offline["env_id"],
                             progress=ctx.progress, device=ctx.device)
    except NonFiniteLossError as exc:
        run.update_summary(phases_run=done, error=str(exc))
        raise
    done.append(PHASE_ONLINE)
    run.update_summary(phases_run=done)
    if summary["score_final"] is not None:
        print(f"{data.dataset_id} [{summary['env_id']}] online: normalised score "
              f"{summary['score_start']:.1f} -> {summary['score_final']:.1f} after "
              f"{summary['env_steps']} env steps ({cfg.online.eval_episodes} episodes)", file=sys.stderr)


class UsageError(ValueError):
    """The run cannot start as asked (an existing run, a config that differs on resume, ...)."""


def fit(cfg: Config, command: str | None = None, progress: bool = True) -> Run:
    """Run the phases ``cfg.phases`` asks for in ``run_directory(cfg)``; returns the (closed) Run.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process calls this: phases A–D share the work
    (uepo.distributed) and rank 0 alone evaluates, fine-tunes online and writes the run's files.

    Raises ``DatasetError``, ``UsageError`` (or ``FileNotFoundError``) before anything is trained when
    the run cannot start, and ``NonFiniteLossError`` (after recording it in summary.json) when a loss
    diverges; the last good checkpoint is kept, so ``--resume`` continues from there.
    """
    validate(cfg)
    torch.set_num_threads(cfg.threads)
    world, device = distributed.init(cfg.device)
    try:
        seed_everything(cfg.seed)
        data: OfflineData = load_offline_data(cfg.dataset, cfg.download, cfg.data.action_clip)
        root = Path(world.gather_objects(str(run_directory(cfg)))[0])  # rank 0's stamp names the run
        if cfg.resume:
            check_resume(cfg, root)
        elif (root / "config.yaml").exists():
            raise UsageError(f"{root} already holds a run; pass --resume to continue it or choose another --run_dir")
        world.barrier()  # no rank may see the config.yaml that rank 0 is about to write as an existing run
        run = Run(root, resume=cfg.resume, rank=world.rank)
        try:
            _fit_in(run, cfg, data, command, progress, world, torch.device(device))
        finally:
            run.close()
    finally:
        distributed.close(world)
    return run


def _fit_in(run: Run, cfg: Config, data: OfflineData, command: str | None, progress: bool,
            world: distributed.World = distributed.SINGLE, device: torch.device | None = None) -> None:
    root = run.dir
    device = device or torch.device(cfg.device)
    # --phases online adds to the phases an earlier invocation ran
    done: list[str] = [p for p in run.read_summary().get("phases_run", []) if p != PHASE_ONLINE] \
        if cfg.phases == "online" else []
    if world.main:
        save_yaml(cfg, root / "config.yaml")
    run.update_summary(
        dataset=data.provenance, env_id=data.env_id, preset=cfg.preset, seed=cfg.seed, policy=cfg.policy,
        command=command or "uepo.fit(...)",
        provenance=provenance(cfg.device, cfg.threads, world.size),
        phases_run=done,
        scores_note="local/Minari data: scores are not comparable with D4RL-v2 tables",
    )
    if world.main:
        print(f"uepo.train: run directory {root}; dataset {data.dataset_id} ({data.size} steps, "
              f"env {data.env_id}); kernel backend {ops.backend(cfg.device)}"
              + (f"; {world.size} processes" if world.parallel else ""), file=sys.stderr)
    if cfg.reuse_from and not cfg.resume and cfg.phases != "online":
        if world.main:
            reused = reuse_phases(cfg, Path(cfg.reuse_from), run, data.provenance.get("content_sha256"))
            print(f"uepo.train: reused from {cfg.reuse_from} (same inputs, so the same result): "
                  f"{', '.join(reused) or 'nothing'}", file=sys.stderr)
        world.barrier()
    ctx = PhaseContext(run, cfg, data.to(device), device, progress=progress, world=world)
    if cfg.phases in ("offline", "all"):
        run_offline(ctx, done)
    world.barrier()
    if not world.main:  # evaluation, phase E, plots and the summary are rank 0's
        return
    if cfg.phases in ("online", "all"):
        run_online_phase(ctx, done)
    timings = run.read_summary().get("timings_s", {})
    print("uepo.train: wall time per phase: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
          file=sys.stderr)
    written = make_plots(root)
    not_run = [p for p in ALL_PHASES if p not in done]
    run.update_summary(phases_run=done, phases_not_run=not_run)
    print(f"uepo.train: ran {', '.join(done)}" + (f". Not run: {', '.join(not_run)}." if not_run else "."),
          file=sys.stderr)
    print(f"uepo.train: results in {root}: summary.json, metrics.csv, checkpoints/ "
          f"({len(written)} plots in {root / 'plots'})", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """``python -m uepo.train``: exit 0 when done, 2 when the run cannot start, 3 when a loss diverged."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
        fit(cfg, command=" ".join(["python -m uepo.train", *argv]))
    except (DatasetError, ValueError, FileNotFoundError) as exc:  # said before anything was trained
        print(f"uepo.train: {exc}", file=sys.stderr)
        return 2
    except NonFiniteLossError as exc:
        print(f"uepo.train: stopped: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
