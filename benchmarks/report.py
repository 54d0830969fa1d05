"""Turns a pytest-benchmark JSON into one table and benchmarks/latest.json.

Times are each benchmark's minimum: on a shared machine the minimum is the least disturbed
estimate, and fused and reference were measured in the same run.
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

from benchmarks.cases import HEADLINE


def machine(threads: int) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {platform.machine()}, torch {torch.__version__}, {threads} thread(s)"


def main(raw_path: str, out_path: str = "benchmarks/latest.json") -> int:
    raw = json.loads(Path(raw_path).read_text())
    times: dict[tuple[str, str], float] = {}
    info: dict[str, dict] = {}
    for bench in raw["benchmarks"]:
        extra = bench["extra_info"]
        times[(extra["key"], extra["impl"])] = bench["stats"]["min"]
        info[extra["key"]] = extra
    rate = info["matmul"]["flops"] / times[("matmul", "matmul")]
    where = machine(info["matmul"].get("threads", 1))
    rows, result = [], {}
    for key, extra in info.items():
        if key == "matmul" or (key, "fused") not in times:
            continue
        fused, ref = times[(key, "fused")], times[(key, "reference")]
        floor = extra["flops"] / rate
        result[key] = {"fused_s": fused, "reference_s": ref, "ratio": ref / fused, "floor_s": floor,
                       "label": extra["label"], "target_ratio": HEADLINE.get(key)}
        target = ""
        if key in HEADLINE:
            target = f">= {HEADLINE[key]:g}x " + ("met" if ref / fused >= HEADLINE[key] else "MISSED")
        rows.append((extra["label"], f"{fused * 1e3:.3f}", f"{ref * 1e3:.3f}", f"{ref / fused:.2f}x",
                     f"{floor * 1e3:.3f}", f"{fused / floor:.1f}", target))
    header = ("case", "fused ms", "reference ms", "ratio", "floor ms", "fused/floor", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    print(f"\nmachine: {where}; float32 matmul rate {rate / 1e9:.1f} GFLOP/s (1024x256x256)")
    print(line(header))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))
    result["_meta"] = {"machine": where, "matmul_gflops": rate / 1e9, "statistic": "min",
                       "backend": "cpu"}
    Path(out_path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
