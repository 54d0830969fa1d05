"""Plots of a run directory's metrics.csv (matplotlib, Agg): ``plots/*.png``.

- ``plots/<phase>.png`` for every phase: one panel per metric against the phase's step; metrics
  that differ only by a sub-policy suffix (``amq_0``, ``amq_1``, ...) share a panel, one line each;
  metrics logged once are drawn as bars.
- ``plots/learning_curve.png``: the online phase's deterministic evaluation score (± std over
  episodes) and the training episodes' score against env steps, with the offline score of the
  selected policy as a reference line when summary.json has it.

    python -m uepo.plots RUN_DIR
    python -m uepo.plots --compare uepo=RUN_A ppo-scratch=RUN_B --out curves.png   # online curves side by side
    python -m uepo.plots --compare uepo=S0,S1,S2 ppo-scratch=P0,P1,P2 --out curves.png  # mean ± std over seeds

``--compare`` draws several runs' online evaluation curves in one figure (phase E and its peers,
``python -m uepo.baselines``) and prints them as a markdown table, one row per evaluation step.
Run directories joined by commas are seeds of one label: its line is their mean with a ± std
band, its cells mean ± std, and its last/best rows the mean over seeds of each seed's last and
best evaluation. A run directory may hold metrics.csv or only the eval_curve.csv kept in docs/results.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the non-interactive backend)

MAX_PANELS = 24  # per phase figure; the rest are listed in the figure's title
_SUFFIX = re.compile(r"^(.*?)_(\d+)$")

Series = dict[str, list[tuple[int, float]]]  # key -> [(step, value)]
Curve = list[tuple[int, float]]  # one run's online evaluations: [(env step, score)]


def read_metrics(path: Path) -> dict[str, Series]:
    """metrics.csv (time, phase, step, key, value) -> {phase: {key: [(step, value), ...]}}."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: pass a run directory made by `python -m uepo.train`")
    out: dict[str, Series] = defaultdict(lambda: defaultdict(list))
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["time", "phase", "step", "key", "value"]:
            raise ValueError(f"{path} is not a uepo metrics file (header {header})")
        for row in reader:
            if len(row) != 5:
                continue  # a line torn by a kill: the rest of the file is still good
            _, phase, step, key, value = row
            out[phase][key].append((int(step), float(value)))
    return {p: dict(s) for p, s in out.items()}


def _groups(series: Series) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """Panel title -> {line label -> points}; keys ending in _<i> share a panel."""
    groups: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(dict)
    for key, points in series.items():
        m = _SUFFIX.match(key)
        if m:
            groups[m.group(1)][f"{m.group(2)}"] = points
        else:
            groups[key][key] = points
    return dict(groups)


def plot_phase(phase: str, series: Series, path: Path) -> Path:
    groups = _groups(series)
    # single values (logged once, no sub-policy index) are listed in one text panel
    scalars = {n: next(iter(g.values()))[0][1] for n, g in groups.items() if len(g) == 1
               and len(next(iter(g.values()))) == 1}
    names = sorted(n for n in groups if n not in scalars)[:MAX_PANELS]
    panels = len(names) + (1 if scalars else 0)
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    if scalars:
        ax = axes.flat[len(names)]
        ax.axis("off")
        text = "\n".join(f"{k} = {v:.4g}" for k, v in sorted(scalars.items()))
        ax.text(0.0, 1.0, text, va="top", ha="left", family="monospace", fontsize=8, transform=ax.transAxes)
        ax.set_title("final values", fontsize=9)
    for ax, name in zip(axes.flat, names, strict=False):
        lines = groups[name]
        if all(len(p) == 1 for p in lines.values()):  # logged once: bars
            labels = sorted(lines, key=lambda s: (len(s), s))
            ax.bar(labels, [lines[k][0][1] for k in labels], color="tab:blue")
        else:
            for label in sorted(lines, key=lambda s: (len(s), s)):
                steps, values = zip(*sorted(lines[label]), strict=True)
                ax.plot(steps, values, label=label if len(lines) > 1 else None, lw=1.2)
            if len(lines) > 1:
                ax.legend(fontsize=7, title="sub-policy", title_fontsize=7)
            ax.set_xlabel("step", fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[panels:]:
        ax.axis("off")
    hidden = sorted(n for n in groups if n not in scalars)[MAX_PANELS:]
    title = f"phase {phase}" + (f" (not shown: {', '.join(hidden)})" if hidden else "")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def plot_learning_curve(online: Series, summary: dict, path: Path) -> Path | None:
    """Online evaluation score against env steps; None when the run has no online evaluation."""
    evals = sorted(online.get("eval_score", []))
    if not evals:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    steps, scores = zip(*evals, strict=True)
    ax.plot(steps, scores, "o-", color="tab:blue", label="evaluation (deterministic)")
    ref = summary.get("online", {}).get("ref_scores")
    std = dict(online.get("eval_return_std", []))
    if ref and len(std) == len(evals):  # the return std in score units
        band = [100.0 * std[s] / (ref[1] - ref[0]) for s in steps]
        ax.fill_between(steps, [m - b for m, b in zip(scores, band, strict=True)],
                        [m + b for m, b in zip(scores, band, strict=True)], color="tab:blue", alpha=0.15)
    train = sorted(online.get("episode_score", []))
    if train:
        ax.plot(*zip(*train, strict=True), color="tab:orange", alpha=0.7, lw=1, label="training episodes")
    offline = (summary.get("scores") or {}).get("selected")
    if isinstance(offline, (int, float)):
        ax.axhline(offline, color="gray", ls="--", lw=1, label="offline (selected policy)")
    dataset = (summary.get("dataset") or {}).get("dataset_id", "")
    return _save_score_figure(fig, ax, f"online fine-tuning {dataset}".strip(), path)


def make_plots(run_dir: str | Path) -> list[Path]:
    """Write every plot of the run into run_dir/plots/ and return their paths."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir / "metrics.csv")
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    out = run_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = [plot_phase(phase, series, out / f"{_filename(phase)}.png")
               for phase, series in metrics.items()]
    curve = plot_learning_curve(metrics.get("online", {}), summary, out / "learning_curve.png")
    return written + ([curve] if curve else [])


def read_eval_curve(run_dir: Path) -> Curve:
    """A run's online evaluation scores [(env step, score)]: from metrics.csv, or from the
    ``eval_curve.csv`` (step,eval_score) that docs/results keeps in its place."""
    run_dir = Path(run_dir)
    kept = run_dir / "eval_curve.csv"
    if not (run_dir / "metrics.csv").exists() and kept.exists():
        with open(kept, newline="") as f:
            return sorted((int(r["step"]), float(r["eval_score"])) for r in csv.DictReader(f))
    return sorted(read_metrics(run_dir / "metrics.csv").get("online", {}).get("eval_score", []))


def online_curves(runs: dict[str, list[Path]]) -> dict[str, list[Curve]]:
    """Label -> one evaluation curve per run (seed) under that label."""
    return {label: [read_eval_curve(Path(d)) for d in dirs] for label, dirs in runs.items()}


def seed_band(label: str, seeds: list[Curve]) -> list[tuple[int, float, float]]:
    """[(env step, mean, std over seeds)] over the evaluations that every seed reached; the seeds
    of one label must have been evaluated at the same env steps."""
    seeds = [c for c in seeds if c]
    if not seeds:
        return []
    length = min(len(c) for c in seeds)
    band = []
    for i in range(length):
        steps = {c[i][0] for c in seeds}
        if len(steps) != 1:
            raise ValueError(f"the runs of {label!r} were evaluated at different env steps ({sorted(steps)}): "
                             "group only seeds of one configuration under a label")
        band.append((seeds[0][i][0], *_mean_std([c[i][1] for c in seeds])))
    return band


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (as the matrix report), 0 for one seed."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _seed_count(seeds: list[Curve]) -> int:
    return sum(1 for c in seeds if c)


def _cell(mean: float, std: float, n: int) -> str:
    """One run: its value; several seeds: mean ± std over them."""
    return f"{mean:.1f}" if n == 1 else f"{mean:.1f} ± {std:.1f}"


def curves_table(curves: dict[str, list[Curve]]) -> str:
    """Markdown: one row per evaluation step, one column per label (mean ± std over its seeds), then
    the last evaluation (the headline) and each seed's best, both averaged over the seeds."""
    bands = {label: {s: (m, sd) for s, m, sd in seed_band(label, seeds)} for label, seeds in curves.items()}
    counts = {label: _seed_count(seeds) for label, seeds in curves.items()}
    header = [label if counts[label] < 2 else f"{label} ({counts[label]} seeds)" for label in curves]
    lines = ["| env steps | " + " | ".join(header) + " |", "|---|" + "---|" * len(curves)]
    for step in sorted({s for band in bands.values() for s in band}):
        cells = [_cell(*bands[lb][step], counts[lb]) if step in bands[lb] else "—" for lb in curves]
        lines.append(f"| {step:,} | " + " | ".join(cells) + " |")
    for name, pick in (("last", lambda c: c[-1][1]), ("best", lambda c: max(v for _, v in c))):
        values = [[pick(c) for c in seeds if c] for seeds in curves.values()]
        lines.append(f"| **{name}** | " + " | ".join(_cell(*_mean_std(v), len(v)) if v else "—" for v in values) + " |")
    return "\n".join(lines)


def runs_table(runs: dict[str, list[Path]], curves: dict[str, list[Curve]]) -> str:
    """Markdown: one row per run (its first evaluation as the start, the last, the best, the gain of the
    last over the start), and per label with several runs their mean ± std and how many ended above
    their start."""
    lines = ["| label | run | start | **last** | best | last − start |", "|---|---|---|---|---|---|"]
    for label, seeds in curves.items():
        rows = [(Path(d).name, c[0][1], c[-1][1], max(v for _, v in c)) for d, c in zip(runs[label], seeds, strict=True)
                if c]
        for name, start, last, best in rows:
            # a relative gain only from a start above a random policy's level (from ~0 it is meaningless)
            gain = f"{last - start:+.1f}" + (f" ({(last - start) / start:+.0%})" if start >= 10 else "")
            lines.append(f"| {label} | {name} | {start:.1f} | **{last:.1f}** | {best:.1f} | {gain} |")
        if len(rows) > 1:
            cols = [_cell(*_mean_std([r[i] for r in rows]), len(rows)) for i in (1, 2, 3)]
            above = sum(r[2] > r[1] for r in rows)
            gain = _cell(*_mean_std([r[2] - r[1] for r in rows]), len(rows))
            lines.append(f"| {label} | mean of {len(rows)} | {cols[0]} | **{cols[1]}** | {cols[2]} | {gain} "
                         f"({above} of {len(rows)} above the start) |")
    return "\n".join(lines)


def plot_online_comparison(curves: dict[str, list[Curve]], path: Path, title: str = "") -> Path:
    """One line per label: its mean over seeds, with a ± std band where it has several."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, seeds in curves.items():
        band, n = seed_band(label, seeds), _seed_count(seeds)
        if not band:
            continue
        steps, means, stds = zip(*band, strict=True)
        (line,) = ax.plot(steps, means, "o-", ms=3, label=label if n == 1 else f"{label} (mean ± std of {n} seeds)")
        if n > 1:
            ax.fill_between(steps, [m - sd for m, sd in zip(means, stds, strict=True)],
                            [m + sd for m, sd in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2)
    return _save_score_figure(fig, ax, title or "online evaluation score", path)


def _save_score_figure(fig: plt.Figure, ax: plt.Axes, title: str, path: Path) -> Path:
    """Title, score-vs-env-steps axes, grid and legend; write ``path`` and close the figure."""
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("normalised score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _filename(phase: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", phase)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m uepo.plots", description="Plot a run's metrics.csv.")
    parser.add_argument("run_dir", nargs="?", help="a run directory (holds metrics.csv)")
    parser.add_argument("--compare", nargs="+", metavar="LABEL=RUN_DIR[,RUN_DIR...]",
                        help="online curves of several runs; runs joined by commas are seeds of one label")
    parser.add_argument("--out", type=Path, default=Path("online_curves.png"), help="--compare's figure")
    parser.add_argument("--title", default="", help="--compare's figure title")
    args = parser.parse_args(argv)
    if args.compare:
        if any("=" not in c for c in args.compare):
            parser.error("--compare takes LABEL=RUN_DIR pairs, e.g. uepo=runs/a ppo-scratch=runs/b")
        try:
            runs = {label: dirs.split(",") for label, dirs in (c.split("=", 1) for c in args.compare)}
            curves = online_curves(runs)
            table = curves_table(curves) + "\n\n" + runs_table(runs, curves)
        except (FileNotFoundError, ValueError) as exc:
            print(f"uepo.plots: {exc}", file=sys.stderr)
            return 2
        print(table)
        print(plot_online_comparison(curves, args.out, args.title))
        return 0
    if args.run_dir is None:
        parser.error("pass a run directory, or --compare LABEL=RUN_DIR ...")
    try:
        paths = make_plots(args.run_dir)
    except (FileNotFoundError, ValueError) as exc:
        print(f"uepo.plots: {exc}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
