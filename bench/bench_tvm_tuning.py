"""Benchmark: TVM untuned, tuned with MetaSchedule, and rebuilt from the tuning records, against ONNX Runtime.

    python bench/bench_tvm_tuning.py [--trials 16] [--runs 20] [--out bench]

EfficientNet-Lite0 on the bundled photos, fp32, target host, checked on the host, build cache off. Three
conversions, each with ONNX Runtime and TVM measured by the same runner in the same run: (1) untuned TVM,
(2) ``--tune TRIALS`` into a fresh records folder, (3) the same records again (no search). Writes
``bench/tvm_tuning_results.json`` and ``bench/tvm_tuning_results.md``.
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


def _conversion(name: str, tmp: Path, runs: int, **tune) -> dict:
    opts = demo_options(
        "host",
        tmp / name,
        device="host",
        runs=runs,
        cache=False,
        precisions=("fp32",),
        backends=("onnxruntime", "tvm"),
        jobs=1,
        **tune,
    )
    t0 = time.perf_counter()
    report = convert(opts)
    wall = time.perf_counter() - t0
    rows = {b["backend"]: b for b in report["builds"]}
    tvm, ort = rows["tvm"], rows["onnxruntime"]
    manifest = json.loads((tmp / name / "tvm_fp32" / "build.json").read_text())
    return {
        "conversion": name,
        "wall_s": round(wall, 1),
        "ort_p50_ms": ort["latency_ms"]["p50"],
        "tvm_p50_ms": tvm["latency_ms"]["p50"],
        "tvm_over_ort": tvm["latency_ms"]["p50"] / ort["latency_ms"]["p50"],
        "tvm_build_s": tvm["build_s"],
        "tvm_top1_agreement": tvm["accuracy"]["top1_agreement"],
        "tuning": manifest.get("tuning"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="MetaSchedule trials per workload")
    parser.add_argument("--minutes", type=float, help="--tune-minutes (default 20)")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--records", type=Path, help="keep the tuning records here (default: a temporary folder)")
    args = parser.parse_args()
    results = {"host": f"{platform.machine()}, {os.cpu_count()} cores", "trials_per_workload": args.trials}
    with tempfile.TemporaryDirectory() as tmp:
        records = args.records or Path(tmp) / "records"
        if records.exists():
            raise SystemExit(f"{records} exists: the tuned conversion must start from empty records")
        tune = {"tune_trials": args.trials, "tune_minutes": args.minutes, "tuning_records": records}
        results["conversions"] = [
            _conversion("untuned", Path(tmp), args.runs),
            _conversion("tuned", Path(tmp), args.runs, **tune),
            _conversion("from records", Path(tmp), args.runs, **tune),
        ]
    (args.out / "tvm_tuning_results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# TVM tuning (EfficientNet-Lite0 fp32, {results['host']}, {args.trials} trials per workload)",
        "",
        "| conversion | ORT p50 ms | TVM p50 ms | TVM / ORT | TVM build s | tuning | TVM top-1 agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in results["conversions"]:
        t = c["tuning"]
        tuning = (
            f"{t['searched']} of {t['workloads']} workloads searched, {t['trials']} trials, {t['tuning_s']:.0f} s; "
            f"{t['from_records']} from records"
            if t
            else "untuned"
        )
        lines.append(
            f"| {c['conversion']} | {c['ort_p50_ms']:.2f} | {c['tvm_p50_ms']:.2f} | {c['tvm_over_ort']:.2f}× | "
            f"{c['tvm_build_s']:.1f} | {tuning} | {c['tvm_top1_agreement']:.1%} |"
        )
    untuned, tuned, again = results["conversions"]
    lines += [
        "",
        f"Tuning took TVM from {untuned['tvm_p50_ms']:.1f} ms to {tuned['tvm_p50_ms']:.1f} ms "
        f"({untuned['tvm_p50_ms'] / tuned['tvm_p50_ms']:.1f}× faster); with the records the TVM build took "
        f"{again['tvm_build_s']:.1f} s against {untuned['tvm_build_s']:.1f} s untuned "
        f"(+{again['tvm_build_s'] - untuned['tvm_build_s']:.1f} s).",
    ]
    (args.out / "tvm_tuning_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
