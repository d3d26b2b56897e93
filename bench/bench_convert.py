"""Benchmark: the bundled EfficientNet-Lite0 through every backend at fp32 and int8, measured in one run.

    python bench/bench_convert.py [--runs 100] [--out bench]

Writes ``bench/results.json`` and ``bench/results.md``: latency of PyTorch eager fp32 (the original),
plain ONNX Runtime fp32, and every edgekit build on this machine, plus conversion wall time per build.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from edgekit import convert
from edgekit.demo import demo_options


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--target", default="arm64")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        report = convert(
            demo_options(
                args.target,
                Path(tmp) / "b",
                precisions=("fp32", "int8"),
                device="host",
                runs=args.runs,
                warmup=10,
                cache=False,  # build times are part of the benchmark
            ),
            log=print,
        )
        total_s = time.perf_counter() - t0
    o = report["original"]
    rows = [
        {
            "name": "PyTorch eager fp32 (original)",
            "p50_ms": o["latency_ms"]["p50"],
            "p90_ms": o["latency_ms"]["p90"],
            "speedup": 1.0,
            "top1_agreement": 1.0,
            "cosine": 1.0,
            "size_mb": o["size_bytes"] / 1e6,
            "build_s": None,
            "status": "ok",
        }
    ]
    for b in report["builds"]:
        name = f"{b['backend']} {b['precision']}"
        if b["backend"] == "onnxruntime" and b["precision"] == "fp32":
            name = "ONNX Runtime fp32 (plain)"
        acc, lat = b.get("accuracy") or {}, b.get("latency_ms") or {}
        rows.append(
            {
                "name": name,
                "p50_ms": lat.get("p50"),
                "p90_ms": lat.get("p90"),
                "speedup": b.get("speedup_vs_original"),
                "top1_agreement": acc.get("top1_agreement"),
                "cosine": acc.get("cosine"),
                "size_mb": (b["size_bytes"] or 0) / 1e6,
                "build_s": b.get("build_s"),
                "status": b["status"] if b["status"] == "ok" else f"{b['status']}: {b.get('reason', '')}",
            }
        )
    ok_int8 = [r for r, b in zip(rows[1:], report["builds"], strict=True) if b["precision"] == "int8" and r["p50_ms"]]
    best = min(ok_int8, key=lambda r: r["p50_ms"]) if ok_int8 else None
    facts = next((b["device_facts"] for b in report["builds"] if b.get("device_facts")), {})
    results = {
        "machine": {
            "cpu": facts.get("cpu"),
            "cores": report["settings"]["threads"],
            "python": platform.python_version(),
        },
        "model": "EfficientNet-Lite0 (ImageNet), 224×224, batch 1",
        "target": args.target,
        "runs": args.runs,
        "held_out": report["data"]["evaluation"],
        "total_convert_s": total_s,
        "rows": rows,
        "best_int8": best,
        "goal": "best int8 ≥ 4× faster than PyTorch eager fp32 with ≥ 99 % top-1 agreement",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(_markdown(results))
    print(_markdown(results))


def _fmt(v, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def _markdown(results: dict) -> str:
    lines = [
        f"# edgekit benchmark — {results['model']}",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} threads. Target files for "
        f"`{results['target']}`, run on this host. {results['runs']} timed runs after 10 warm-up; accuracy on "
        f"{results['held_out']['samples']} held-out real-photo crops. Whole conversion: "
        f"{results['total_convert_s']:.0f} s.",
        "",
        "| build | p50 ms | p90 ms | speedup vs eager | top-1 agreement | cosine | size MB | convert s | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['name']} | {_fmt(r['p50_ms'], '.2f')} | {_fmt(r['p90_ms'], '.2f')} | "
            f"{_fmt(r['speedup'], '.2f')}× | {_fmt(r['top1_agreement'] and r['top1_agreement'] * 100, '.1f')}% | "
            f"{_fmt(r['cosine'], '.4f')} | {r['size_mb']:.2f} | {_fmt(r['build_s'], '.1f')} | {r['status']} |"
        )
    lines += ["", f"Goal: {results['goal']}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
