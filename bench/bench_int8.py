"""Benchmark: int8 quality and speed per quantizer setting, on the demo's EfficientNet-Lite0 and 240 real photos.

    python bench/bench_int8.py [--target host] [--bundled] [--rounds 5] [--block 20] [--out bench]

Calibration: the demo's 64 ten-crops of the bundled photos; held out: the 240 prepared photos
(``edgekit photos prepare``), or with ``--bundled`` the demo's 66 bundled crops.

For each setting (ONNX Runtime's quantize_static as before; NNCF without, with fast and with full bias
correction; full with NNCF's min/max, its histogram range estimator, and the closer of both) the demo is
converted to int8 for ONNX Runtime, TFLite and OpenVINO and checked on this machine.
Then every build and plain ONNX Runtime fp32 are timed **interleaved**: in each round every build runs one
block of inferences, so a burst of load on this shared machine hits every row alike. Writes
``bench/int8_results.{json,md}`` (``int8_results_bundled.*`` with ``--bundled``).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench_timing import demo_photo, interleaved, machine

from edgekit import convert
from edgekit.demo import demo_options
from edgekit.onnx_hub import QuantConfig

SETTINGS = {
    "ORT quantize_static (before)": QuantConfig(quantizer="ort"),
    "NNCF, no bias correction (auto ranges)": QuantConfig(bias_correction="none"),
    "NNCF, fast bias correction (auto ranges)": QuantConfig(bias_correction="fast"),
    "NNCF, full bias correction, min/max ranges (--calib-method minmax, the default before)": QuantConfig(
        method="minmax"
    ),
    "NNCF, full bias correction, histogram ranges (--calib-method entropy)": QuantConfig(method="entropy"),
    "NNCF, full bias correction, the closer of both on the calibration set (auto, the default)": QuantConfig(),
}
BACKENDS = ("onnxruntime", "tflite", "openvino")


def _convert(
    args: argparse.Namespace, out: Path, quant: QuantConfig, precision: str, backends: tuple[str, ...]
) -> tuple[dict, float]:
    t0 = time.perf_counter()
    options = demo_options(
        args.target,
        out,
        "crops" if args.bundled else "photos",
        precisions=(precision,),
        backends=backends,
        device="host",
        quant=quant,
    )
    report = convert(replace(options, runs=5, cache=False), log=lambda message: None)  # conversion time as such
    return report, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="host")
    parser.add_argument("--bundled", action="store_true", help="hold out the demo's bundled crops instead")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--block", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    rows, builds = [], []
    with tempfile.TemporaryDirectory() as tmp:
        _convert(args, Path(tmp) / "fp32", QuantConfig(), "fp32", ("onnxruntime",))
        builds.append(("ONNX Runtime fp32 (plain)", Path(tmp) / "fp32" / "onnxruntime_fp32"))
        for i, (setting, quant) in enumerate(SETTINGS.items()):
            report, wall = _convert(args, Path(tmp) / f"s{i}", quant, "int8", BACKENDS)
            held_out = report["data"]["evaluation"]
            for b in report["builds"]:
                acc = b.get("accuracy") or {}
                confident = acc.get("confident") or {}
                row = {
                    "setting": setting,
                    "backend": b["backend"],
                    "status": b["status"],
                    "top1_agreement": acc.get("top1_agreement"),
                    "confident_agreement": confident.get("top1_agreement"),
                    "confident_n": confident.get("samples"),
                    "top5_contains_top1": acc.get("top5_contains_top1"),
                    "cosine": acc.get("cosine"),
                    "cosine_min": acc.get("cosine_min"),
                    "conversion_s": wall,
                    "quantization": b.get("quantization", ""),
                }
                rows.append(row)
                if b["status"] == "ok":
                    builds.append((f"{setting}|{b['backend']}", Path(tmp) / f"s{i}" / f"{b['backend']}_int8"))
        image = demo_photo(args.target)
        p50 = interleaved(builds, image, args.rounds, args.block)
    reference = p50.pop("ONNX Runtime fp32 (plain)")
    for row in rows:
        row["p50_ms"] = p50.get(f"{row['setting']}|{row['backend']}")
        row["speed_vs_ort_fp32"] = reference / row["p50_ms"] if row["p50_ms"] else None
    results = {
        "machine": machine(),
        "target": args.target,
        "held_out": held_out,
        "timing": f"interleaved: {args.rounds} rounds × {args.block} runs per build, median",
        "ort_fp32_p50_ms": reference,
        "rows": rows,
    }
    name = "int8_results_bundled" if args.bundled else "int8_results"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    (args.out / f"{name}.md").write_text(_markdown(results))
    print(_markdown(results))


def _pct(v) -> str:
    return "—" if v is None else f"{v * 100:.1f} %"


def _markdown(results: dict) -> str:
    lines = [
        f"# int8 per quantizer setting — EfficientNet-Lite0, target {results['target']}",
        "",
        f"Held out: {results['held_out']['samples']} samples of {results['held_out']['source']}; calibration: the "
        "demo's 64 ten-crops of the bundled photos.",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, x86 without VNNI: "
        f"{results['machine']['x86_without_vnni']}. Timing {results['timing']}; "
        f"plain ONNX Runtime fp32 p50 {results['ort_fp32_p50_ms']:.2f} ms.",
        "",
        "| setting | backend | status | top-1 agreement | confident (n) | top-5 ∋ top-1 | cosine mean / min "
        "| p50 ms | × ORT fp32 | conversion s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        cos = "—" if r["cosine"] is None else f"{r['cosine']:.4f} / {r['cosine_min']:.4f}"
        p50 = "—" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}"
        speed = "—" if r["speed_vs_ort_fp32"] is None else f"{r['speed_vs_ort_fp32']:.2f}×"
        lines.append(
            f"| {r['setting']} | {r['backend']} | {r['status']} | {_pct(r['top1_agreement'])} | "
            f"{_pct(r['confident_agreement'])} ({r['confident_n']}) | {_pct(r['top5_contains_top1'])} | {cos} | "
            f"{p50} | {speed} | {r['conversion_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
