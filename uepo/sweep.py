"""Sweeps: datasets × seeds × variants of ``python -m uepo.train``, run as Ray tasks, then tabulated.

    python -m uepo.sweep run --datasets local/hopper/medium-v0 local/hopper/medium-replay-v0 --seeds 0 1 2
    python -m uepo.sweep run --address auto ...      # on a running Ray cluster (`ray start --head` first)
    python -m uepo.sweep run ... -- --pretrain.steps 20000    # flags after -- go to every uepo.train
    python -m uepo.sweep report > table.md

Each run is one Ray task that starts one ``uepo.train`` process with ``--cpus_per_run`` torch
threads (and OMP_NUM_THREADS) and reserves as many Ray CPUs, so a machine never runs more threads
than it has cores. Without ``--address`` Ray starts here, sized to this machine (or to
``--max_parallel`` runs), and stops at the end; with it the sweep joins that cluster, whose nodes
must see ``--out`` at the same path (a shared file system) and have uepo installed. Which run
starts when, what is skipped, resumed or reused: ``uepo/matrix.py``. At the end the finished runs'
scores are printed as one table (mean ± std per dataset × variant) and written as CSV and a bar
plot. Ray is the ``sweep`` extra; ``report`` does not need it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from uepo.matrix import (
    DEFAULT_VARIANTS,
    VARIANTS,
    Job,
    aggregate,
    aggregate_table,
    collect,
    report,
    run_job,
    write_csv,
    write_json,
    write_plot,
)

INSTALL_HINT = ('uepo.sweep runs on Ray, which is not installed: pip install "uepo[sweep]" '
                "(in a checkout: pip install -c constraints.txt ray, the tested version)")
FORWARDED_ENV = ("MINARI_DATASETS_PATH", "UEPO_BACKEND")  # so that cluster workers read what the driver reads
START_ATTEMPTS = 3  # local Ray starts tried before giving up
RESERVED = {"--dataset", "--preset", "--seed", "--phases", "--run_dir", "--resume", "--reuse_from", "--threads"}


class RayMissing(RuntimeError):
    """Ray is an optional extra; the message says how to install it."""


def import_ray():
    """Ray is imported here only, on use, so that the package and ``report`` work without it."""
    try:
        import ray
    except ImportError as e:
        raise RayMissing(INSTALL_HINT) from e
    return ray


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def start_ray(ray, address: str | None, num_cpus: int) -> bool:
    """Join ``address``, or start a local Ray of ``num_cpus`` CPUs; True when this call started it."""
    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address)
        return True
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a local sweep has no reason to report usage
    for attempt in range(1, START_ATTEMPTS + 1):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False)  # never a cluster left running
            return True
        except Exception as e:  # Ray gives its node 30 s to register; a busy machine can take longer
            if "timed out during startup" not in str(e) or attempt == START_ATTEMPTS:
                raise
            log(f"Ray's local node did not start within Ray's 30 s (a busy machine): attempt {attempt + 1} "
                f"of {START_ATTEMPTS}")
            ray.shutdown()
    return True


def slots(ray, cpus: int, max_parallel: int | None) -> int:
    """How many runs may be in flight: as many as the cluster's CPUs hold (it may grow), at most max_parallel."""
    n = int(ray.cluster_resources().get("CPU", 0) // cpus)
    return min(n, max_parallel) if max_parallel else n


def finish(ray, ref, job: Job) -> bool:
    """Print how a run ended; True when it ended finished."""
    try:
        res = ray.get(ref)
    except Exception as e:  # the task died (its worker or node): the run is not finished
        log(f"FAILED {job.run_dir}: {str(e).splitlines()[0]}")
        return False
    ok = res["returncode"] == 0 and job.finished()
    note = f", {res['note']}" if res["note"] else ""
    log(f"{'done' if ok else 'FAILED'} {job.run_dir} ({res['seconds']:.0f} s, exit {res['returncode']}, "
        f"on {res['host']}{note}; log {job.log_path})")
    return ok


def schedule(ray, pending: list[Job], max_parallel: int | None, gpus_per_run: float, poll_s: float) -> int:
    """Submit runs in order as they become ready (a variant after its main run) and slots free up.

    The order is kept by submitting late rather than by Ray's dependencies, so a seed's variants
    start before the next seed's main runs, as the report fills seed by seed."""
    cpus = max(j.threads for j in pending)
    task = ray.remote(run_job).options(num_cpus=cpus, num_gpus=gpus_per_run)
    env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    inflight: dict[object, Job] = {}  # Ray ObjectRef -> its job
    failed = 0
    while pending or inflight:
        free = slots(ray, cpus, max_parallel) - len(inflight)
        busy = {j.run_dir for j in inflight.values()}  # a main run is scored before its process ends
        for job in [j for j in pending if j.ready() and j.main_dir not in busy][:max(0, free)]:
            pending.remove(job)
            cmd = " ".join(job.command()[1:])
            inflight[task.remote(job, env)] = job
            log(f"start {job.run_dir}: {cmd}")
        if not inflight:
            if any(j.main_job().running_elsewhere() for j in pending):
                time.sleep(poll_s)  # their main run is held by another process: wait for it
                continue
            if slots(ray, cpus, max_parallel) < 1:
                print(f"no Ray node has {cpus} CPUs free for a run (--cpus_per_run)", file=sys.stderr)
                return 1
            print(f"cannot start (their main run failed or is missing): {[str(j.run_dir) for j in pending]}",
                  file=sys.stderr)
            return 1
        done, _ = ray.wait(list(inflight), num_returns=1, timeout=poll_s)
        for ref in done:
            failed += not finish(ray, ref, inflight.pop(ref))
    return 1 if failed else 0


def run_matrix(jobs: list[Job], workers: int | None = None, *, address: str | None = None,
               gpus_per_run: float = 0.0, poll_s: float = 5.0) -> int:
    """Run the unfinished jobs on Ray (``workers`` runs at a time at most); 0 when all ended finished.

    Finished runs are skipped before Ray is even started, so a rerun of a done sweep is instant."""
    ray = import_ray()
    pending = [j for j in jobs if not j.finished()]
    log(f"{len(jobs) - len(pending)} of {len(jobs)} runs already finished (skipped), {len(pending)} to run")
    if not pending:
        return 0
    cpus = max(j.threads for j in pending)
    started = start_ray(ray, address, max(cpus, (workers * cpus) if workers else (os.cpu_count() or 1)))
    try:
        return schedule(ray, pending, workers, gpus_per_run, poll_s)
    finally:
        if started:
            ray.shutdown()


def write_aggregate(jobs: list[Job], csv_path: Path, plot_path: Path, stream=None) -> None:
    """The one table (printed to ``stream``, default stdout), its CSV and its bar plot, with their paths."""
    stream = stream or sys.stdout
    rows = aggregate(jobs)
    print(aggregate_table(rows), file=stream)
    write_csv(rows, csv_path)
    print(f"table: {csv_path}", file=stream)
    if rows:
        write_plot(rows, plot_path)
        print(f"plot: {plot_path}", file=stream)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m uepo.sweep", description=__doc__.split("\n\n")[0],
                                     epilog="Flags after -- are passed to every uepo.train run.")
    parser.add_argument("action", choices=["run", "report"])
    parser.add_argument("--datasets", nargs="+", default=["local/hopper/medium-v0", "local/hopper/medium-replay-v0"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(VARIANTS))
    parser.add_argument("--preset", default="bench")
    parser.add_argument("--phases", default="offline", choices=["offline", "all"],
                        help="offline: A–D and the evaluation, as the matrix in docs/RESULTS.md; all: also online E")
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--address", default=None,
                        help="run: join this Ray cluster ('auto': the one started on this node); "
                             "default: start Ray here, sized to this machine")
    parser.add_argument("--cpus_per_run", type=int, default=1, help="run: torch threads and Ray CPUs of each run")
    parser.add_argument("--gpus_per_run", type=float, default=0.0, help="run: Ray GPUs of each run (--device cuda)")
    parser.add_argument("--max_parallel", "--workers", type=int, default=None, dest="max_parallel",
                        help="run: runs at a time at most (default: as many as the CPUs hold)")
    parser.add_argument("--json", type=Path, default=None, help="report: also write every run's record here")
    parser.add_argument("--collect", type=Path, default=None,
                        help="report: also copy every finished run's summary.json and config.yaml here")
    parser.add_argument("--csv", type=Path, default=None, help="the mean ± std table as CSV (default OUT/sweep.csv)")
    parser.add_argument("--plot", type=Path, default=None, help="its bar plot (default OUT/sweep.png)")
    parser.add_argument("--reuse_root", type=Path, default=None,
                        help="run: an earlier matrix's --out; each run starts from its namesake's finished phases "
                             "there whose inputs are unchanged (keep --cpus_per_run as it was: threads are an input)")
    return parser


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Split off the uepo.train flags after ``--``; refuse those the sweep sets per run itself."""
    cut = argv.index("--") if "--" in argv else len(argv)
    parser = build_parser()
    args, extra = parser.parse_args(argv[:cut]), argv[cut + 1:]
    clash = sorted(RESERVED & {a.split("=")[0] for a in extra})
    if clash:
        parser.error(f"the sweep sets {', '.join(clash)} for each run itself; use its own flags")
    return args, extra


def jobs_of(args: argparse.Namespace, extra: list[str]) -> list[Job]:
    """Seed by seed (a whole seed's table fills first), then dataset by dataset, the main run first.

    Paths are made absolute: Ray workers, here or on other nodes, need not share this directory."""
    variants = ["main"] + [v for v in args.variants if v != "main"]
    out = args.out.resolve()
    reuse = args.reuse_root.resolve() if args.reuse_root else None
    return [Job(d, s, v, out, args.preset, reuse, args.cpus_per_run, args.phases, tuple(extra))
            for s in args.seeds for d in args.datasets for v in variants]


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    if args.action == "run":
        try:
            import_ray()
        except RayMissing as e:
            print(e, file=sys.stderr)
            return 2
    jobs = jobs_of(args, extra)
    csv_path, plot_path = args.csv or args.out / "sweep.csv", args.plot or args.out / "sweep.png"
    if args.action == "report":
        print(report(jobs))
        if args.json:
            write_json(jobs, args.json)
        if args.collect:
            print(f"copied {collect(jobs, args.collect)} runs' summary.json and config.yaml to {args.collect}",
                  file=sys.stderr)
        write_aggregate(jobs, csv_path, plot_path, stream=sys.stderr)  # stdout stays the tables alone
        return 0
    code = run_matrix(jobs, args.max_parallel, address=args.address, gpus_per_run=args.gpus_per_run)
    write_aggregate(jobs, csv_path, plot_path)
    return code


if __name__ == "__main__":
    sys.exit(main())
