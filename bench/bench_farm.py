"""Benchmark: one build profiled on 1 board vs N boards at once through a local TVM RPC farm.

    python bench/bench_farm.py [--boards 3] [--emulated 1] [--runs 50] [--out bench]

A digits CNN (trained here in seconds on scikit-learn's digits, shipped in calib_data) converted to ONNX
Runtime fp32 for the host; a farm of ``--boards`` board servers on this machine plus ``--emulated`` boards
inside the emulated arm64 device; ``edgekit profile`` on one board and on all of them at once, each three
times. Writes ``bench/farm_results.json`` and ``bench/farm_results.md`` (wall time per profile, the farm's
median p50 and spread). The boards share this machine's cores: the wall time shows the fan-out's own cost,
not what separate boards would give.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from edgekit import ConvertOptions, convert
from edgekit.farm import Farm
from edgekit.models.small_cnn import train_small_cnn
from edgekit.profiling import profile_build


def _build(tmp: Path) -> tuple[Path, Path]:
    with np.load(Path(str(resources.files("edgekit.calib_data") / "digits" / "digits.npz"))) as npz:
        x, y = npz["input"], npz["labels"]
    model = train_small_cnn(torch.from_numpy(x[:1300]), torch.from_numpy(y[:1300]), epochs=6)
    torch.save(model.state_dict(), tmp / "cnn.pt")
    np.savez(tmp / "calib.npz", input=x[:1300])
    np.savez(tmp / "in.npz", x=x[1300:1332])
    convert(
        ConvertOptions(
            model="edgekit.models.small_cnn:SmallCNN",
            weights=tmp / "cnn.pt",
            calib=tmp / "calib.npz",
            target="host",
            device="host",
            out=tmp / "o",
            backends=("onnxruntime",),
            precisions=("fp32",),
            runs=2,
            warmup=0,
            cache=False,
        )
    )
    return tmp / "o" / "onnxruntime_fp32", tmp / "in.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boards", type=int, default=3, help="board servers on this machine")
    parser.add_argument("--emulated", type=int, default=1, help="boards inside the emulated arm64 device")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    total = args.boards + args.emulated
    results = {"host": f"{platform.machine()}, {os.cpu_count()} cores", "runs": args.runs, "profiles": []}
    with tempfile.TemporaryDirectory() as tmp:
        build, inputs = _build(Path(tmp))
        # one board: a farm of one host board (the tracker gives any free board; this makes it a host one)
        for boards, farm_size in ((1, (1, 0)), (total, (args.boards, args.emulated))):
            with Farm("bench", host_boards=farm_size[0], emulated=farm_size[1]) as farm:
                for _ in range(3):
                    t0 = time.perf_counter()
                    result = profile_build(build, inputs, farm.url, runs=args.runs, boards=boards)
                    wall = time.perf_counter() - t0
                    f = result["boards"]
                    results["profiles"].append(
                        {
                            "boards": boards,
                            "wall_s": round(wall, 2),
                            "ok": f["ok"],
                            "failed": f["failed"],
                            "median_p50_ms": f["median_p50_ms"],
                            "spread": f["spread"],
                            "per_board": {b["board"]: b.get("latency_ms", {}).get("p50") for b in f["boards"]},
                        }
                    )
                    print(results["profiles"][-1], flush=True)
    (args.out / "farm_results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"# Board farm fan-out ({results['host']}; {args.boards} host + {args.emulated} emulated arm64 boards, "
        f"digits CNN, ONNX Runtime fp32, {args.runs} timed runs)",
        "",
        "| boards at once | wall s (median of 3) | boards ok | median p50 ms (host boards) | spread |",
        "|---|---|---|---|---|",
    ]
    for boards in (1, total):
        rows = [p for p in results["profiles"] if p["boards"] == boards]
        lines.append(
            f"| {boards} | {statistics.median(p['wall_s'] for p in rows):.1f} | {rows[-1]['ok']} | "
            f"{statistics.median(p['median_p50_ms'] for p in rows):.3f} | {rows[-1]['spread']:.0%} |"
        )
    (args.out / "farm_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
