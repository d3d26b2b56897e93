"""Benchmark: TVM untuned, tuned with MetaSchedule, and rebuilt from the tuning records, against ONNX Runtime.

    python bench/bench_tvm_tuning.py [--trials 32] [--rounds 5] [--block 20] [--out bench]

EfficientNet-Lite0 on the bundled photos, fp32, target host, checked on the host, build cache off. Three
conversions: (1) untuned TVM beside ONNX Runtime, (2) ``--tune TRIALS`` into a fresh records folder, (3) the
same records again, with a search budget of a second (no search when (2) finished; when ``--minutes``
stopped (2), it does not go on for more than one turn). Then ONNX Runtime fp32 and the three TVM builds are
timed **interleaved** (``bench_timing``): the same schedules timed in two separate checks on this shared
machine differed by 1.4×. Writes ``bench/tvm_tuning_results.json`` and ``bench/tvm_tuning_results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bench_timing import demo_photo, interleaved

from edgekit import convert
from edgekit.demo import demo_options


def _conversion(name: str, tmp: Path, backends: tuple[str, ...], **tune) -> dict:
    opts = demo_options(
        "host",
        tmp / name,
        "crops",
        device="host",
        runs=5,
        cache=False,
        precisions=("fp32",),
        backends=backends,
        jobs=1,
        **tune,
    )
    t0 = time.perf_counter()
    report = convert(opts)
    wall = time.perf_counter() - t0
    tvm = next(b for b in report["builds"] if b["backend"] == "tvm")
    manifest = json.loads((tmp / name / "tvm_fp32" / "build.json").read_text())
    return {
        "conversion": name,
        "wall_s": round(wall, 1),
        "tvm_build_s": tvm["build_s"],
        "tvm_top1_agreement": tvm["accuracy"]["top1_agreement"],
        "tuning": manifest.get("tuning"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=32, help="MetaSchedule trials per workload")
    parser.add_argument("--minutes", type=float, default=60.0, help="--tune-minutes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--records", type=Path, help="keep the tuning records here (default: a temporary folder)")
    args = parser.parse_args()
    results = {
        "host": f"{platform.machine()}, {os.cpu_count()} cores",
        "trials_per_workload": args.trials,
        "timing": f"interleaved: {args.rounds} rounds × {args.block} runs per build, median",
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = args.records or tmp / "records"
        if records.exists():
            raise SystemExit(f"{records} exists: the tuned conversion must start from empty records")
        tune = {"tune_trials": args.trials, "tune_minutes": args.minutes, "tuning_records": records}
        conversions = [
            _conversion("untuned", tmp, ("onnxruntime", "tvm")),
            _conversion("tuned", tmp, ("tvm",), **tune),
            _conversion("from records", tmp, ("tvm",), **{**tune, "tune_minutes": 1 / 60}),
        ]
        image = demo_photo()
        builds = [("ort", tmp / "untuned" / "onnxruntime_fp32")]
        builds += [(c["conversion"], tmp / c["conversion"] / "tvm_fp32") for c in conversions]
        p50 = interleaved(builds, image, args.rounds, args.block)
    results["ort_p50_ms"] = ort = p50.pop("ort")
    for c in conversions:
        c["tvm_p50_ms"] = p50[c["conversion"]]
        c["tvm_over_ort"] = c["tvm_p50_ms"] / ort
    results["conversions"] = conversions
    (args.out / "tvm_tuning_results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# TVM tuning (EfficientNet-Lite0 fp32, {results['host']}, {args.trials} trials per workload)",
        "",
        f"ONNX Runtime fp32 p50 {ort:.2f} ms; every p50 below is {results['timing']}, in one run.",
        "",
        "| conversion | TVM p50 ms | TVM / ORT | TVM build s | tuning | TVM top-1 agreement |",
        "|---|---|---|---|---|---|",
    ]
    for c in conversions:
        t = c["tuning"]
        tuning = (
            f"{t['searched']} of {t['workloads']} workloads searched, {t['trials']} trials, {t['tuning_s']:.0f} s; "
            f"{t['from_records']} from records" + ("; stopped at --minutes" if t["stopped_at_budget"] else "")
            if t
            else "untuned"
        )
        lines.append(
            f"| {c['conversion']} | {c['tvm_p50_ms']:.2f} | {c['tvm_over_ort']:.2f}× | "
            f"{c['tvm_build_s']:.1f} | {tuning} | {c['tvm_top1_agreement']:.1%} |"
        )
    untuned, tuned, again = conversions
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
