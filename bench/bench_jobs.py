"""Benchmark: the demo conversion with builds one at a time (--jobs 1) and concurrently (--jobs 2), same run.

    python bench/bench_jobs.py [--target host] [--runs 20] [--out bench]

EfficientNet-Lite0 on the bundled photos, fp32 and int8, every backend of the target, checked on the host,
the build cache off. Writes ``bench/jobs_results.json`` and ``bench/jobs_results.md``: total wall time and
each build's conversion time per setting (with two jobs a build shares the cores, so its own time grows while
the whole conversion shrinks).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from edgekit import convert
from edgekit.demo import demo_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    results = {"host": f"{platform.machine()}, {os.cpu_count()} cores", "target": args.target, "settings": []}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            opts = demo_options(
                args.target, Path(tmp) / "b", "crops", jobs=jobs, cache=False, device="host", runs=args.runs,
                precisions=("fp32", "int8"),
            )  # fmt: skip
            t0 = time.perf_counter()
            report = convert(opts)
            total = time.perf_counter() - t0
        builds = {
            f"{b['backend']} {b.get('requested_precision', b['precision'])}": {
                "status": b["status"],
                "build_s": b.get("build_s"),
            }
            for b in report["builds"]
        }
        results["settings"].append({"jobs": jobs, "total_s": round(total, 1), "builds": builds})
        print(f"--jobs {jobs}: {total:.1f} s", flush=True)
    (args.out / "jobs_results.json").write_text(json.dumps(results, indent=2))
    one, two = results["settings"]
    lines = [
        f"# Concurrent builds ({results['host']}, target {args.target}, EfficientNet-Lite0 fp32 + int8)",
        "",
        "| build | --jobs 1: build s | --jobs 2: build s |",
        "|---|---|---|",
    ]
    for name, row in one["builds"].items():
        other = two["builds"].get(name, {})
        lines.append(f"| {name} | {row['build_s'] or row['status']} | {other.get('build_s') or other.get('status')} |")
    ratio = two["total_s"] / one["total_s"]
    lines += ["", f"Whole conversion: {one['total_s']} s → {two['total_s']} s ({ratio:.0%} of the sequential time)."]
    (args.out / "jobs_results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
