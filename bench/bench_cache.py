"""Benchmark: a conversion run again with the conversion cache — the first run exports, builds and measures;
the unchanged re-run reuses the export (checked against the original again), every build and, on the same
device, every measurement (the original is measured again, the gates are evaluated again); ``--recheck``
also runs every reused build on the device again.

    python bench/bench_cache.py [--out bench]

Runs ``edgekit convert`` as a user would (a fresh process each time, host target and device, fp32 + int8,
every host backend) on two models: the bundled EfficientNet-Lite0 with its real photos, and a small CNN
trained here on scikit-learn's digits (where fixed costs — imports, measuring the original — dominate).
Writes ``bench/cache_results.json`` and ``bench/cache_results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from edgekit.models.small_cnn import train_small_cnn


def _digits(folder: Path) -> list[str]:
    with np.load(Path(str(resources.files("edgekit.calib_data") / "digits" / "digits.npz"))) as npz:
        x, y = npz["input"], npz["labels"]
    model = train_small_cnn(torch.from_numpy(x[:1300]), torch.from_numpy(y[:1300]), epochs=12)
    torch.save(model.state_dict(), folder / "cnn.pt")
    np.savez(folder / "calib.npz", input=x[:1300])
    np.savez(folder / "eval.npz", input=x[1300:], labels=y[1300:])
    return ["edgekit.models.small_cnn:SmallCNN", "--weights", str(folder / "cnn.pt"), "--calib",
            str(folder / "calib.npz"), "--eval", str(folder / "eval.npz")]  # fmt: skip


def _efficientnet() -> list[str]:
    photos = str(resources.files("edgekit.calib_data") / "photos")
    return ["edgekit.models.efficientnet_lite:efficientnet_lite0", "--calib", photos, "--input-shape", "1x3x224x224",
            "--mean", "127", "--std", "128", "--ten-crop", "--calib-size", "64", "--eval-size", "66"]  # fmt: skip


def _timed(args: list[str], env: dict) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(["edgekit", "convert", *args], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode not in (0, 1):
        raise SystemExit(f"edgekit convert failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = Path(args[args.index("--out") + 1])
    return seconds, json.loads((out / "report.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        models = {"EfficientNet-Lite0 (224×224, 66 held-out crops)": _efficientnet(), "digits CNN": _digits(root)}
        for index, (name, model_args) in enumerate(models.items()):
            env = {**os.environ, "EDGEKIT_BUILD_CACHE": str(root / f"cache{index}")}
            common = ["--target", "host", "--device", "host", "--precision", "fp32,int8", "--quiet"]
            first_s, first = _timed([*model_args, *common, "--out", str(root / f"a{index}")], env)
            again_s, again = _timed([*model_args, *common, "--out", str(root / f"b{index}")], env)
            recheck_s, _ = _timed([*model_args, *common, "--recheck", "--out", str(root / f"r{index}")], env)
            reused = sum(bool(b.get("cache")) for b in again["builds"])
            same = all(
                (a.get("accuracy") or {}).get("cosine") == (b.get("accuracy") or {}).get("cosine")
                for a, b in zip(first["builds"], again["builds"], strict=True)
            )
            rows.append(
                {
                    "model": name,
                    "builds": len(again["builds"]),
                    "reused": reused,
                    "first_s": round(first_s, 1),
                    "rerun_s": round(again_s, 1),
                    "ratio": round(again_s / first_s, 3),
                    "recheck_s": round(recheck_s, 1),
                    "build_s_first": round(sum(b.get("build_s") or 0 for b in first["builds"]), 1),
                    "identical_accuracy": same,
                }
            )
    result = {"machine": f"{platform.machine()}, {os.cpu_count()} cores", "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cache_results.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Conversion cache: first run vs unchanged re-run",
        "",
        "`edgekit convert --target host --device host --precision fp32,int8` (every host backend), "
        f"{result['machine']}; each run a fresh process. The re-run reuses the export (checked against the "
        "original again), the builds and their measurements on this device; `--recheck` runs every build again.",
        "",
        "| model | builds reused | first run s | (of which building s) | re-run s | re-run / first "
        "| re-run with --recheck s | same accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['model']} | {r['reused']}/{r['builds']} | {r['first_s']} | {r['build_s_first']} | {r['rerun_s']} | "
        f"{r['ratio']:.1%} | {r['recheck_s']} | {'yes' if r['identical_accuracy'] else 'NO'} |"
        for r in rows
    ]
    (args.out / "cache_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
