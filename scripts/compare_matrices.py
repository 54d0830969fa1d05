"""Two matrices of the same runs, side by side: what a changed setting did, run by run (paired).

    python scripts/compare_matrices.py BASE.json [BASE.json ...] --new NEW.json [NEW.json ...] [--json out.json]

Each file is a ``python -m uepo.sweep report --json`` output. Runs are paired on (dataset, variant, seed);
a run in only one of the two sides is left out (and counted). Per dataset × variant, and pooled per
variant, it prints the mean over the paired seeds of: the raw μⁱ, the improved heads, the selected
policy and the selection regret, base → new, with the selected score's paired difference (mean ± std
over seeds). Used for registered tests where a phase is rerun on the same upstream phases
(``--reuse_from``), so the raw scores match and what moves is the setting's.

``--targets`` also prints issue 8's four targets per dataset for the main method on both sides, over the
seeds the new side has, each against the base side's ``gaussian-ensemble`` runs of the same seeds (the new
side need not rerun the Gaussian ensemble when its change is UEPO's alone).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from uepo.matrix import TARGETS, target_margins

Key = tuple[str, str, int]


def load(paths: list[Path]) -> dict[Key, dict]:
    runs: dict[Key, dict] = {}
    for path in paths:
        for r in json.loads(path.read_text())["runs"]:
            if r.get("selected") is not None:
                runs[(r["dataset"], r["variant"], r["seed"])] = r
    return runs


def mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean(values):+.2f} ± {sd:.2f}"


def row(name: str, pairs: list[tuple[dict, dict]]) -> dict:
    def side(r: dict, field: str) -> float:
        value = r[field]
        return mean(value) if isinstance(value, list) else value

    out = {"group": name, "runs": len(pairs)}
    for field in ("raw", "improved", "selected", "regret"):
        out[field] = [mean([side(b, field) for b, _ in pairs]), mean([side(n, field) for _, n in pairs])]
    out["selected_diff"] = [n["selected"] - b["selected"] for b, n in pairs]
    return out


def table(rows: list[dict]) -> str:
    lines = ["| runs | n | raw μⁱ | improved heads | selected | selected: new − base | regret |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[f][0]:.1f} → {r[f][1]:.1f}" for f in ("raw", "improved", "selected")]
        lines.append(f"| {r['group']} | {r['runs']} | {' | '.join(cells)} | {spread(r['selected_diff'])} | "
                     f"{r['regret'][0]:.2f} → {r['regret'][1]:.2f} |")
    return "\n".join(lines)


def compare(base: dict[Key, dict], new: dict[Key, dict]) -> list[dict]:
    paired = sorted(set(base) & set(new))
    groups: dict[str, list[tuple[dict, dict]]] = {}
    for key in paired:
        dataset, variant, _ = key
        groups.setdefault(f"{variant} {dataset}", []).append((base[key], new[key]))
        groups.setdefault(f"**{variant}, all**", []).append((base[key], new[key]))
    return [row(name, pairs) for name, pairs in sorted(groups.items(), key=lambda kv: (kv[0].startswith("**"), kv[0]))]


def targets(base: dict[Key, dict], new: dict[Key, dict]) -> list[dict]:
    rows = []
    for dataset in sorted({d for d, v, _ in new if v == "main"}):
        seeds = sorted(s for d, v, s in new if d == dataset and v == "main")
        gauss = [base[(dataset, "gaussian-ensemble", s)] for s in seeds if (dataset, "gaussian-ensemble", s) in base]
        old = [base[(dataset, "main", s)] for s in seeds if (dataset, "main", s) in base]
        if not gauss or len(old) != len(seeds):
            print(f"{dataset}: base lacks main or gaussian-ensemble runs for seeds {seeds}; no targets")
            continue
        rows.append({"dataset": dataset, "seeds": seeds, "gaussian_seeds": len(gauss),
                     "base": target_margins(old, gauss),
                     "new": target_margins([new[(dataset, "main", s)] for s in seeds], gauss)})
    return rows


def _fmt(margin: float | None) -> str:
    return "—" if margin is None else f"{margin:+.1f}"


def _met(margins: list[float | None]) -> int:
    return sum(m is not None and m >= 0 for m in margins)


def targets_table(rows: list[dict]) -> str:
    lines = ["| dataset (seeds) | " + " | ".join(TARGETS) + " | met, base → new |", "|---|" + "---|" * 5]
    for r in rows:
        cells = [f"{_fmt(b)} → {_fmt(n)}" for b, n in zip(r["base"], r["new"], strict=True)]
        met = [_met(r[side]) for side in ("base", "new")]
        seeds = ", ".join(map(str, r["seeds"]))
        lines.append(f"| {r['dataset']} ({seeds}) | {' | '.join(cells)} | {met[0]} → {met[1]} |")
    total = [sum(_met(r[side]) for r in rows) for side in ("base", "new")]
    lines.append(f"\nMargins (≥ 0: met), base → new; targets met: {total[0]} → {total[1]} of {4 * len(rows)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="+", type=Path, help="matrix JSON(s) of today's setting")
    parser.add_argument("--new", nargs="+", type=Path, required=True, help="matrix JSON(s) of the changed setting")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--targets", action="store_true", help="also issue 8's targets per dataset, base → new")
    args = parser.parse_args(argv)
    base, new = load(args.base), load(args.new)
    rows = compare(base, new)
    unpaired = len(set(base) ^ set(new))
    print(table(rows))
    print(f"\n{sum(1 for k in base if k in new)} paired runs; {unpaired} in one side only (left out)")
    target_rows = targets(base, new) if args.targets else []
    if target_rows:
        print("\n" + targets_table(target_rows))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "targets": target_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
