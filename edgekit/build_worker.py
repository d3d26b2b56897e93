"""Run one converter in its own process, so that a crash or hang in a backend sinks only its build.

python -m edgekit.build_worker JOB.json   → writes JOB.result.json
"""

from __future__ import annotations

import json
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from edgekit.converters import BuildContext, SkipBuild, get_converter
from edgekit.data import Dataset, TensorSpec
from edgekit.errors import one_line
from edgekit.onnx_hub import QuantConfig
from edgekit.target import Target


def job_to_json(backend: str, ctx: BuildContext, calib_npz: Path) -> dict:
    """The build context as the worker process reads it (the calibration arrays are in ``calib_npz``)."""
    return {
        "backend": backend,
        "onnx_fp32": str(ctx.onnx_fp32),
        "onnx_qdq": str(ctx.onnx_qdq) if ctx.onnx_qdq else None,
        "precision": ctx.precision,
        "target": ctx.target.to_json(),
        "calib": str(calib_npz),
        "inputs": [s.to_json() for s in ctx.inputs],
        "outputs": [s.to_json() for s in ctx.outputs],
        "out_dir": str(ctx.out_dir),
        "work_dir": str(ctx.work_dir),
        "float_nodes": list(ctx.float_nodes),
        "torch_model": str(ctx.torch_model) if ctx.torch_model else None,
        "tf_model": str(ctx.tf_model) if ctx.tf_model else None,
        "options": ctx.options,
        "quant": asdict(ctx.quant),
        "int8_mode": ctx.int8_mode,
    }


def _context(job: dict) -> BuildContext:
    import numpy as np

    specs = [TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in job["inputs"]]
    with np.load(job["calib"], allow_pickle=False) as npz:
        calib = Dataset({s.name: npz[s.name] for s in specs}, None, job["calib"])
    return BuildContext(
        onnx_fp32=Path(job["onnx_fp32"]),
        onnx_qdq=Path(job["onnx_qdq"]) if job["onnx_qdq"] else None,
        precision=job["precision"],
        target=Target.from_json(job["target"]),
        calib=calib,
        inputs=specs,
        outputs=[TensorSpec(s["name"], tuple(s["shape"]), s["dtype"]) for s in job["outputs"]],
        out_dir=Path(job["out_dir"]),
        work_dir=Path(job["work_dir"]),
        float_nodes=tuple(job["float_nodes"]),
        torch_model=Path(job["torch_model"]) if job["torch_model"] else None,
        tf_model=Path(job["tf_model"]) if job["tf_model"] else None,
        options=job["options"],
        quant=QuantConfig(**job["quant"]),
        int8_mode=job["int8_mode"],
    )


def main(job_path: str) -> int:
    path = Path(job_path)
    job = json.loads(path.read_text())
    try:
        ctx = _context(job)
        ctx.out_dir.mkdir(parents=True, exist_ok=True)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)
        result = {"status": "ok", "build": get_converter(job["backend"]).build(ctx).to_json()}
    except SkipBuild as exc:
        result = {"status": "skipped", "reason": str(exc)}
    except Exception as exc:
        result = {"status": "failed", "reason": one_line(exc), "traceback": traceback.format_exc()[-4000:]}
    path.with_suffix(".result.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
