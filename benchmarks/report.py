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
from uepo.runs import cpu_model


def machine(threads: int) -> str:
    return f"{cpu_model()}, {platform.machine()}, torch {torch.__version__}, {threads} thread(s)"


def acting_rates(info: dict[str, dict]) -> dict[str, dict]:
    """Steps/s of rollout collection, the env alone and the sampler alone (each its minimum over
    rounds that alternate the three), and the ratio to their limit."""
    out = {}
    for key, extra in info.items():
        if not key.startswith("acting_") or "min_s" not in extra:
            continue
        rate = {k: extra["steps"] / extra["min_s"][k] for k in ("policy", "env", "sampler")}
        limit = 1 / (1 / rate["env"] + 1 / rate["sampler"])
        out[key] = {"policy_steps_per_s": rate["policy"], "env_only_steps_per_s": rate["env"],
                    "sampler_only_steps_per_s": rate["sampler"], "limit_steps_per_s": limit,
                    "ratio_to_limit": rate["policy"] / limit}
    return out


def kernel_results(times: dict[tuple[str, str], float], info: dict[str, dict], rate: float) -> dict[str, dict]:
    """Fused vs reference of every kernel case, with its floor at the matmul rate ``rate``."""
    result = {}
    for key, extra in info.items():
        if key == "matmul" or (key, "fused") not in times:
            continue
        fused, ref = times[(key, "fused")], times[(key, "reference")]
        result[key] = {"fused_s": fused, "reference_s": ref, "ratio": ref / fused, "floor_s": extra["flops"] / rate,
                       "label": extra["label"], "target_ratio": HEADLINE.get(key)}
    return result


def print_kernels(result: dict[str, dict], where: str, rate: float) -> None:
    rows = []
    for key, r in result.items():
        target = ""
        if key in HEADLINE:
            target = f">= {HEADLINE[key]:g}x " + ("met" if r["ratio"] >= HEADLINE[key] else "MISSED")
        rows.append((r["label"], f"{r['fused_s'] * 1e3:.3f}", f"{r['reference_s'] * 1e3:.3f}", f"{r['ratio']:.2f}x",
                     f"{r['floor_s'] * 1e3:.3f}", f"{r['fused_s'] / r['floor_s']:.1f}", target))
    header = ("case", "fused ms", "reference ms", "ratio", "floor ms", "fused/floor", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    print(f"\nmachine: {where}; float32 matmul rate {rate / 1e9:.1f} GFLOP/s (1024x256x256)")
    print(line(header))
    print(line(tuple("-" * w for w in widths)))
    for r in rows:
        print(line(r))


def print_acting(acting: dict[str, dict]) -> None:
    print("\nacting (env steps/s; limit = 1 / (1/env_only + 1/sampler_only)):")
    for key, r in acting.items():
        print(f"  {key}: policy {r['policy_steps_per_s']:.0f}, env only {r['env_only_steps_per_s']:.0f}, "
              f"sampler only {r['sampler_only_steps_per_s']:.0f}, limit {r['limit_steps_per_s']:.0f}, "
              f"ratio {r['ratio_to_limit']:.2f} (target >= 0.8: "
              f"{'met' if r['ratio_to_limit'] >= 0.8 else 'MISSED'})")


def main(raw_path: str, out_path: str = "benchmarks/latest.json") -> int:
    """Report the benchmarks in ``raw_path`` and merge them into ``out_path``: keys this run did not
    measure (e.g. the kernel cases when only the acting suite ran) keep their earlier values."""
    raw = json.loads(Path(raw_path).read_text())
    times: dict[tuple[str, str], float] = {}
    info: dict[str, dict] = {}
    for bench in raw["benchmarks"]:
        extra = bench["extra_info"]
        times[(extra["key"], extra["impl"])] = bench["stats"]["min"]
        info[extra["key"]] = extra
    out = Path(out_path)
    result = json.loads(out.read_text()) if out.exists() else {}
    if "matmul" in info:
        rate = info["matmul"]["flops"] / times[("matmul", "matmul")]
        where = machine(info["matmul"].get("threads", 1))
        kernels = kernel_results(times, info, rate)
        print_kernels(kernels, where, rate)
        result.update(kernels)
        result["_meta"] = {"machine": where, "matmul_gflops": rate / 1e9, "statistic": "min", "backend": "cpu"}
    acting = acting_rates(info)
    if acting:
        print_acting(acting)
        result.update({k: {**v, "machine": machine(info[k].get("threads", 1)), "statistic": "min"}
                       for k, v in acting.items()})
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten: {out_path} (updated: {', '.join(k for k in info if k in result)}; other keys kept)")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
