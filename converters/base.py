"""The converter interface: build from ONNX for a target → artifacts; load and run a build; describe it."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from edgekit.data import Dataset, TensorSpec
from edgekit.onnx_hub import QuantConfig
from edgekit.target import Target


class SkipBuild(Exception):
    """The backend does not offer this precision/target; the report row says ``skipped`` with the reason."""


@dataclass
class BuildContext:
    """Everything a converter needs; all paths are absolute."""

    onnx_fp32: Path
    onnx_qdq: Path | None
    precision: str
    target: Target
    calib: Dataset
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    out_dir: Path
    work_dir: Path
    float_nodes: tuple[str, ...] = ()  # ONNX node names to keep in float in int8 builds (accuracy fallback)
    torch_model: Path | None = None  # the (pruned) PyTorch model, pickled, for backends that convert from PyTorch
    tf_model: Path | None = None  # a TensorFlow source as a SavedModel folder or .tflite (TFLite builds it natively)
    options: dict = field(default_factory=dict)  # this backend's user overrides (e.g. hls4ml per-layer config)
    quant: QuantConfig = field(default_factory=QuantConfig)
    int8_mode: str = "static"  # static (calibrated activations) | dynamic (activations quantized per inference)


@dataclass
class BuildResult:
    """What a converter produced: artifact files (relative to ``out_dir``) and honest notes."""

    backend: str
    precision: str
    artifacts: dict[str, str]
    notes: list[str] = field(default_factory=list)
    quantization: str = ""

    def to_json(self) -> dict:
        return asdict(self)


class Converter(ABC):
    """One backend. Subclasses set ``name`` and ``precisions`` and implement ``build``."""

    name: ClassVar[str]
    precisions: ClassVar[tuple[str, ...]]

    @abstractmethod
    def build(self, ctx: BuildContext) -> BuildResult:
        """Write the deployable artifacts and ``build.json`` into ``ctx.out_dir``."""

    def load(self, build_dir: Path, threads: int = 1):
        """A function running the build on an input dict (batch of one) → list of outputs."""
        from edgekit.runtime.runner_main import load_build

        return load_build(build_dir, threads)[0]

    def describe(self, result: BuildResult) -> str:
        files = ", ".join(result.artifacts.values())
        return f"{self.name} {result.precision} ({result.quantization or 'float'}): {files}"

    def check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise SkipBuild(f"{self.name} offers {', '.join(self.precisions)}, not {precision}")


def write_manifest(ctx: BuildContext, result: BuildResult, inputs: list[dict], outputs: list[dict], **extra) -> None:
    """Write ``build.json``: what the self-contained runner needs to load and feed the build."""
    manifest = {
        "backend": result.backend,
        "precision": result.precision,
        "target": ctx.target.name,
        "artifacts": result.artifacts,
        "inputs": inputs,
        "outputs": outputs,
        "model_inputs": [spec.to_json() for spec in ctx.inputs],  # the original's inputs: what diff/profile feed
        **extra,
    }
    (ctx.out_dir / "build.json").write_text(json.dumps(manifest, indent=2))


def io_by_name(specs: list[TensorSpec]) -> list[dict]:
    return [{"name": s.name} for s in specs]


def channels_last_perm(shape: tuple[int, ...]) -> list[int] | None:
    """NCHW→NHWC style permutation for rank 3–5 tensors, None otherwise."""
    rank = len(shape)
    return [0, *range(2, rank), 1] if 3 <= rank <= 5 else None


def inverse_perm(perm: list[int] | None) -> list[int] | None:
    return None if perm is None else [int(i) for i in np.argsort(perm)]
