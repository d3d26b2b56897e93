"""``edgekit inspect``: what a conversion would meet, before running one.

Inputs and outputs (shapes, dtypes, dynamic dimensions and the static shape to give), MACs and
parameters, and per backend of the target: the operators it cannot convert or run, and those that stay
float in its int8 builds — each with a fix. ``would_fail`` says whether ``edgekit convert`` would fail.
"""

from __future__ import annotations

import collections
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekit.data import TensorSpec
from edgekit.errors import EdgekitError, one_line
from edgekit.source import SourceModel, load_model
from edgekit.target import Target, load_target

TEXT_LINE_WIDTH, IMAGE_SIDE, SEQUENCE = 320, 640, 128  # suggested sizes for dynamic dimensions


@dataclass
class Finding:
    severity: str  # error: convert would fail | warning: needs attention | info
    backend: str  # "" for the model itself
    problem: str
    fix: str

    def to_json(self) -> dict:
        return {"severity": self.severity, "backend": self.backend, "problem": self.problem, "fix": self.fix}


def suggest_shape(spec: TensorSpec) -> tuple[int, ...]:
    """A static shape for an input with dynamic (-1) dimensions: batch 1, image sides and sequences sized."""
    shape = list(spec.shape)
    if shape and shape[0] == -1:
        shape[0] = 1
    if len(shape) == 4:
        spatial = (1, 2) if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4) else (2, 3)
        static = [shape[i] for i in spatial if shape[i] != -1]
        for i in spatial:
            if shape[i] == -1:  # both dynamic: a detector-style square; one fixed and small: a text line
                shape[i] = TEXT_LINE_WIDTH if static and static[0] <= 64 else IMAGE_SIDE
    return tuple(SEQUENCE if d == -1 else d for d in shape)


def _shape_arg(specs: list[TensorSpec], shapes: list[tuple[int, ...]]) -> str:
    def one(spec: TensorSpec, shape: tuple[int, ...]) -> str:
        dtype = "" if spec.dtype == "float32" else f":{spec.dtype}"
        name = "" if len(specs) == 1 else f"{spec.name}:"
        return f"--input-shape {name}{'x'.join(map(str, shape))}{dtype}"

    return " ".join(one(s, sh) for s, sh in zip(specs, shapes, strict=True))


def inspect_model(
    model: str,
    target: str = "host",
    input_shapes: dict[str, tuple[tuple[int, ...], str]] | None = None,
    weights: Path | None = None,
    trust_model: bool = False,
) -> dict:
    """Inspect ``model`` for ``target`` (see the module docstring); bad input raises :class:`EdgekitError`."""
    from edgekit import onnx_hub
    from edgekit.pipeline import ConvertOptions, _resolve_specs

    tgt = load_target(target)
    source = load_model(model, weights, trust=trust_model)
    declared = source.input_specs
    specs = _resolve_specs(ConvertOptions(model=model, input_shapes=input_shapes), source)
    findings: list[Finding] = []
    if specs is None:
        if not declared:
            raise EdgekitError(
                f"model '{model}' does not declare its input shapes",
                "pass --input-shape NAME:1x3x224x224 (one per input) to inspect it",
            )
        suggested = [suggest_shape(s) for s in declared]
        specs = [TensorSpec(s.name, sh, s.dtype) for s, sh in zip(declared, suggested, strict=True)]
        dynamic = ", ".join(f"{s.name} {list(s.shape)}" for s in declared if -1 in s.shape)
        findings.append(
            Finding(
                "warning",
                "",
                f"dynamic input dimensions ({dynamic}): TFLite, TVM, Core ML and hls4ml need static shapes, and "
                "edgekit fixes them for every backend",
                f"give the shape you deploy: {_shape_arg(declared, suggested)} (or calibration data of that shape); "
                "inspected with it",
            )
        )
    with tempfile.TemporaryDirectory(prefix="edgekit-inspect-") as tmp:
        graph = Path(tmp) / "model.onnx"
        try:
            onnx_hub.export_onnx(source, specs, graph)
        except EdgekitError:
            raise
        except Exception as exc:
            raise EdgekitError(
                f"model '{model}' cannot be exported to ONNX with inputs {[list(s.shape) for s in specs]} "
                f"({one_line(exc, 200)})",
                "check --input-shape; convert would fail the same way",
            ) from exc
        report = _describe(source, tgt, specs, graph)
        for backend in tgt.backends:
            findings += _backend_findings(backend, source, graph, collections.Counter(report["ops"]))
    report["findings"] = [f.to_json() for f in findings]
    report["would_fail"] = any(f.severity == "error" for f in findings)
    return report


def _describe(source: SourceModel, target: Target, specs: list[TensorSpec], graph: Path) -> dict:
    import onnx

    from edgekit.complexity import onnx_macs_params
    from edgekit.onnx_hub import onnx_output_specs

    model = onnx.load(str(graph), load_external_data=False)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    try:
        macs, params = onnx_macs_params(graph, {s.name: s.shape for s in specs})
    except Exception:  # control flow or shapes the counter cannot follow
        macs, params = None, None
    return {
        "model": source.location,
        "framework": source.framework,
        "target": target.name,
        "backends": list(target.backends),
        "declared_inputs": [s.to_json() for s in source.input_specs or []],
        "inputs": [s.to_json() for s in specs],
        "outputs": [s.to_json() for s in onnx_output_specs(graph)],
        "macs": macs,
        "params": params,
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
    }


def _fmt(ops: dict[str, int]) -> str:
    return ", ".join(f"{op} ×{n}" for op, n in sorted(ops.items()))


def _backend_findings(backend: str, source: SourceModel, graph: Path, ops: collections.Counter) -> list[Finding]:
    """What ``backend`` cannot convert or run, and what stays float in its int8 build."""
    from edgekit.converters import Refused, backend_spec, get_converter

    spec = backend_spec(backend)
    if spec.source == "pytorch" and source.framework != "pytorch":
        return [
            Finding(
                "error",
                backend,
                f"{backend} builds start from a PyTorch nn.Module; this is a {source.framework} model",
                "pass the architecture as module:callable with --weights, or leave it out with --backends",
            )
        ]
    try:
        missing = get_converter(backend).missing_ops(graph, dict(ops), source.module)
    except Refused as exc:
        return [Finding("error", backend, str(exc), f"fix the model, or leave {backend} out with --backends")]
    except Exception as exc:  # an inspection tool that fails says so; the conversion itself may still work
        return [Finding("warning", backend, f"could not be inspected ({one_line(exc, 160)})", "try the conversion")]
    findings = []
    if missing:
        findings.append(
            Finding(
                "error",
                backend,
                f"cannot convert or run: {_fmt(missing)}",
                f"replace these operators in the model, or leave {backend} out with --backends",
            )
        )
    if spec.int8_graph:
        from onnxruntime.quantization.registry import QDQRegistry

        heavy = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Einsum", "Attention", "LSTM", "GRU", "RNN"}
        floating = {op: n for op, n in ops.items() if op in heavy and op not in QDQRegistry}
        if floating:
            findings.append(
                Finding(
                    "info",
                    backend,
                    f"compute operators ONNX Runtime's quantizer leaves in float in int8 builds: {_fmt(floating)}",
                    "expect part of the int8 build to run in float (the report's 'executed' column shows it)",
                )
            )
    return findings
