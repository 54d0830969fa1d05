"""Two matrices of the same runs, side by side: what a changed setting did, run by run (paired).

    python scripts/compare_matrices.py BASE.json [BASE.json ...] --new NEW.json [NEW.json ...] [--json out.json]

Each file is a ``python -m uepo.sweep report --json`` output. Runs are paired on (dataset, variant, seed);
a run in only one of the two sides is left out (and counted). Per dataset × variant, and pooled per
variant, it prints the mean over the paired seeds of: the raw μⁱ, the improved heads, the selected
policy and the selection regret, base → new, with the selected score's paired difference (mean ± std
over seeds). Used for registered tests where a phase is rerun on the same upstream phases
(``--reuse_from``), so the raw scores match and what moves is the setting's.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", nargs="+", type=Path, help="matrix JSON(s) of today's setting")
    parser.add_argument("--new", nargs="+", type=Path, required=True, help="matrix JSON(s) of the changed setting")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    base, new = load(args.base), load(args.new)
    rows = compare(base, new)
    unpaired = len(set(base) ^ set(new))
    print(table(rows))
    print(f"\n{sum(1 for k in base if k in new)} paired runs; {unpaired} in one side only (left out)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
