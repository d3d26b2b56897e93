"""Benchmark: structured pruning + int8 on a CNN trained on real Fashion-MNIST, host and emulated Arm.

    apt-get install dataset-fashion-mnist   # Debian: the real 60k/10k labelled images (MIT)
    python bench/bench_prune.py [--ratios 0.3,0.5] [--recover-steps 400] [--out bench]

Trains ``fashion_cnn`` on the first 12,000 training images (cached), then runs ``edgekit prune-scan``
(unpruned and each ratio; label-free recovery: BN re-estimation + self-distillation on 2,000
unlabelled training images) on the host and on the emulated arm64 device. Accuracy is top-1 on the
held-out test images; speed-ups compare each pruned int8 build with the unpruned int8 build of the
same backend on the same device in the same run. Writes ``prune_results.json`` and ``prune_results.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgekit import ConvertOptions
from edgekit.models.small_cnn import fashion_cnn, train_small_cnn
from edgekit.prune import PruneConfig
from edgekit.scan import prune_scan

DATA = Path("/usr/share/datasets/fashion-mnist")
N_TRAIN, N_CALIB = 12000, 2000


def _idx(name: str) -> np.ndarray:
    raw = gzip.decompress((DATA / name).read_bytes())
    if "labels" in name:
        return np.frombuffer(raw, np.uint8, offset=8).astype(np.int64)
    return np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32) / 255.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratios", default="0.3,0.5")
    parser.add_argument("--recover-steps", type=int, default=400)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--emulated-eval-size", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    if not DATA.exists():
        raise SystemExit(f"{DATA} is missing: apt-get install dataset-fashion-mnist")
    x, y = _idx("train-images-idx3-ubyte.gz"), _idx("train-labels-idx1-ubyte.gz")
    xt, yt = _idx("t10k-images-idx3-ubyte.gz"), _idx("t10k-labels-idx1-ubyte.gz")
    torch.set_num_threads(2)
    cache = Path.home() / ".cache" / "edgekit" / "bench"
    cache.mkdir(parents=True, exist_ok=True)
    weights = cache / f"fashion_cnn_{N_TRAIN}_e3.pt"
    if not weights.exists():
        t0 = time.perf_counter()
        model = train_small_cnn(torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN]), 3, model=fashion_cnn())
        torch.save(model.state_dict(), weights)
        print(f"trained fashion_cnn in {time.perf_counter() - t0:.0f} s")
    ratios = tuple(float(r) for r in args.ratios.split(","))
    config = PruneConfig("structured", 0.5, recover_steps=args.recover_steps)
    results = {"machine": f"{platform.machine()}, {platform.processor() or platform.platform()}", "scans": []}
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "calib.npz", input=x[N_TRAIN : N_TRAIN + N_CALIB])
        for device, backends, n_eval in (
            ("host", ("onnxruntime", "tflite", "openvino"), args.eval_size),
            ("emulated", ("onnxruntime", "tflite"), args.emulated_eval_size),
        ):
            np.savez(Path(tmp) / f"eval_{device}.npz", input=xt[:n_eval], labels=yt[:n_eval])
            opts = ConvertOptions(
                model="edgekit.models.small_cnn:fashion_cnn",
                weights=weights,
                target="arm64",
                device=device,
                backends=backends,
                precisions=("int8",),
                calib=Path(tmp) / "calib.npz",
                eval=Path(tmp) / f"eval_{device}.npz",
                calib_size=N_CALIB,
                eval_size=n_eval,
                runs=args.runs,
                threads=1,
                out=Path(tmp) / f"scan_{device}",
            )
            t0 = time.perf_counter()
            scan = prune_scan(opts, config, ratios, log=print)
            scan["wall_s"] = round(time.perf_counter() - t0, 1)
            scan["eval_samples"] = n_eval
            results["scans"].append(scan)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "prune_results.json").write_text(json.dumps(results, indent=2))
    (args.out / "prune_results.md").write_text(_markdown(results, args))
    print((args.out / "prune_results.md").read_text())


def _markdown(results: dict, args) -> str:
    lines = [
        "# Pruning benchmark: fashion_cnn (real Fashion-MNIST), structured L2 pruning + int8",
        "",
        f"Machine: {results['machine']}. {N_TRAIN} training images (3 epochs); label-free recovery on {N_CALIB} "
        f"unlabelled training images ({args.recover_steps} self-distillation steps + BN re-estimation); "
        "int8 calibrated on the same images; accuracy = top-1 on the first held-out test images; 1 thread.",
        "",
        "| device | build | ratio | MACs | params | top-1 acc. | drop vs original | p50 ms | speed-up vs unpruned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for scan in results["scans"]:
        base = {b["build"]: b["p50_ms"] for b in scan["points"][0]["builds"]}
        for p in scan["points"]:
            orig = p["original_task_metric"]
            for b in p["builds"]:
                if b["status"] != "ok":
                    lines.append(f"| {scan['device']} | {b['build']} | {p['ratio']:.2f} | | | {b['status']} | | | |")
                    continue
                emu = " (emulated)" if b["latency_kind"] == "emulated" else ""
                lines.append(
                    f"| {scan['device']} ({scan['eval_samples']} images) | {b['build']} | {p['ratio']:.2f} | "
                    f"{p['macs'] / 1e6:.1f} M | {p['params']:,} | {b['accuracy'] * 100:.1f}% | "
                    f"{(orig - b['accuracy']) * 100:+.1f} pt | {b['p50_ms']:.3f}{emu} | "
                    f"{base[b['build']] / b['p50_ms']:.2f}× |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
