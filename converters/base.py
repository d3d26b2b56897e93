"""The backend interface: a typed record of what a backend can do (``BackendSpec``, declared once in its
folder's ``__init__.py``) and the converter that builds from ONNX for a target, inspects a build and gives
its per-layer tensors. How a build is loaded and run on a device lives in the folder's ``runtime.py``.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgekit.data import Dataset, TensorSpec
from edgekit.onnx_hub import QuantConfig
from edgekit.target import Target


@dataclass(frozen=True)
class BackendSpec:
    """What a backend is and can do. Everything outside the backend's folder asks this record."""

    name: str
    summary: str
    precisions: tuple[str, ...]
    converter: str  # "module:Class" inside the backend's folder
    runtime_modules: tuple[str, ...] = ()  # import names on a device; any one of them runs the builds
    runtime_package: str = ""  # what to pip install on a device that has none of them
    libraries: tuple[str, ...] = ()  # distributions whose versions key the build cache
    int8_graph: bool = False  # int8 builds start from edgekit's shared int8 ONNX graph
    int8_biases: bool = False  # int8 builds quantize themselves, with the shared graph's bias-corrected biases
    int8_choices: bool = False  # int8 builds quantize themselves, with the shared graph's ranges and first-layer bits
    int8_modes: tuple[str, ...] = ("static", "dynamic")  # int8 modes whose builds compute in integer arithmetic
    int8_not_offered: str = ""  # why int8 is not offered in the other modes (the build is made in fp32 instead)
    source: str = "onnx"  # the model it converts: onnx | pytorch
    tf_native: bool = False  # TensorFlow sources are converted by the backend's own converter
    profiler: str = ""  # empty: runtime.py has profile(); else why there is no per-op profile, and what to use
    host_only: str = ""  # why its builds run only on this host; empty: on any device that has its runtime
    host_system: str = ""  # the host OS its runtime needs (platform.system()), e.g. "Darwin"
    cannot_run: dict[str, str] = field(default_factory=dict, hash=False)  # device kind or arch → why not
    latency_kind: str = "measured"  # measured | simulated
    layer_diff: str = ""  # empty: the converter gives per-layer tensors; else why not, and what to use
    not_verified: str = ""  # said in every report that builds this backend (unless its host_system is here)
    color: str = "#7f7f7f"  # its colour in report plots
    folder: Path | None = None  # set by the registry

    def uses_int8_graph(self, mode: str) -> bool:
        """Its ``mode`` (static/dynamic) int8 builds need the shared int8 graph: to build from, or for its biases or
        its calibration choices (made for static int8 only)."""
        return self.int8_graph or self.int8_biases or (self.int8_choices and mode == "static")

    @property
    def runtime_file(self) -> Path:
        """The self-contained loader that runs on the device (numpy and the runtime only)."""
        assert self.folder is not None
        return self.folder / "runtime.py"

    def device_limit(self, device: str, arch: str, host_os: str) -> str | None:
        """Why a ``device`` kind (host, emulated, ssh, adb) of architecture ``arch`` can never run these builds."""
        if self.host_system and (device != "host" or host_os != self.host_system):
            return self.host_only or f"{self.name} runs only on {self.host_system}"
        if self.host_only and device != "host":
            return self.host_only
        return self.cannot_run.get(device) or (self.cannot_run.get(arch) if device != "host" else None)


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

    def source_graph(self, precision: str) -> Path:
        """The ONNX graph a build of ``precision`` is made from (recorded in its manifest)."""
        return self.onnx_qdq if precision == "int8" and self.onnx_qdq is not None else self.onnx_fp32


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


class Refused(Exception):
    """The backend's own tool refuses the whole graph (the message says why)."""


class Converter(ABC):
    """One backend: builds, and what only the backend knows about its builds. ``spec`` is set by the registry."""

    spec: ClassVar[BackendSpec]

    @property
    def name(self) -> str:
        return self.spec.name

    @abstractmethod
    def build(self, ctx: BuildContext) -> BuildResult:
        """Write the deployable artifacts and ``build.json`` into ``ctx.out_dir``."""

    def cache_inputs(self, ctx: BuildContext) -> dict:
        """What a build depends on beyond ``ctx`` (keys the build cache), e.g. TVM's tuning records."""
        return {}

    def extra_build_s(self, ctx: BuildContext) -> float:
        """Seconds this build may take beyond the build time limit (e.g. a tuning time budget)."""
        return 0.0

    def load(self, build_dir: Path, threads: int = 1):
        """A function running the build on an input dict (batch of one) → list of outputs."""
        from edgekit.runtime.runner_main import load_build

        return load_build(build_dir, threads, self.spec.runtime_file)[0]

    def describe(self, result: BuildResult) -> str:
        files = ", ".join(result.artifacts.values())
        return f"{self.name} {result.precision} ({result.quantization or 'float'}): {files}"

    def check_precision(self, precision: str) -> None:
        if precision not in self.spec.precisions:
            raise SkipBuild(f"{self.name} offers {', '.join(self.spec.precisions)}, not {precision}")

    def executed(self, build_dir: Path, manifest: dict, measured: dict[str, Any], work: Path) -> dict:
        """What an int8 build really runs in int8 (see :mod:`edgekit.executed`); ``measured`` is the device's
        result (e.g. OpenVINO's runtime precisions)."""
        return {"unavailable": f"{self.name} does not report executed precisions"}

    def layer_tensors(
        self, build_dir: Path, manifest: dict, feed: dict[str, np.ndarray], wanted: set[str]
    ) -> tuple[dict[str, np.ndarray], str]:
        """Intermediate tensors of the build named as in the original's ONNX graph, and where they came from."""
        raise NotImplementedError(self.spec.layer_diff)

    def missing_ops(self, graph: Path, ops: dict[str, int], module=None) -> dict[str, int]:
        """Operators (or, for PyTorch-based backends, ``module``'s layers) the backend cannot convert or run;
        raises ``Refused`` when its tool refuses the whole graph."""
        return {}


def built_from(build_dir: Path, manifest: dict) -> Path:
    """The ONNX graph a build was made from (its manifest says; older builds follow the folder convention)."""
    from edgekit.errors import EdgekitError

    recorded = manifest.get("source_graph")
    if recorded:
        graph = (build_dir / recorded).resolve()
    else:
        graph = build_dir.parent / "onnx" / ("model_int8_qdq.onnx" if manifest["precision"] == "int8" else "model.onnx")
    if not graph.is_file():
        raise EdgekitError(f"{graph} is missing", "run this on the folder edgekit convert wrote, with its onnx/ folder")
    return graph


def write_manifest(ctx: BuildContext, result: BuildResult, inputs: list[dict], outputs: list[dict], **extra) -> None:
    """Write ``build.json``: what the self-contained runner needs to load and feed the build."""
    manifest = {
        "backend": result.backend,
        "precision": result.precision,
        "target": ctx.target.name,
        "target_spec": ctx.target.to_json(),  # profile/diff use the target the build was made for
        "int8_mode": ctx.int8_mode if result.precision == "int8" else None,
        "source_graph": _relative(ctx.source_graph(result.precision), ctx.out_dir),
        "artifacts": result.artifacts,
        "inputs": inputs,
        "outputs": outputs,
        "model_inputs": [spec.to_json() for spec in ctx.inputs],  # the original's inputs: what diff/profile feed
        **extra,
    }
    (ctx.out_dir / "build.json").write_text(json.dumps(manifest, indent=2))


def _relative(path: Path | None, start: Path) -> str | None:
    return None if path is None else os.path.relpath(path, start)


def io_by_name(specs: list[TensorSpec]) -> list[dict]:
    return [{"name": s.name} for s in specs]


def channels_last_perm(shape: tuple[int, ...]) -> list[int] | None:
    """NCHW→NHWC style permutation for rank 3–5 tensors, None otherwise."""
    rank = len(shape)
    return [0, *range(2, rank), 1] if 3 <= rank <= 5 else None


def inverse_perm(perm: list[int] | None) -> list[int] | None:
    return None if perm is None else [int(i) for i in np.argsort(perm)]
