"""ONNX as the hub: export from PyTorch, simplify, check against the original, quantize to QDQ."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.data import Dataset, TensorSpec
from edgekit.errors import EdgekitError, one_line
from edgekit.source import SourceModel

OPSET = 18


def export_onnx(source: SourceModel, specs: list[TensorSpec], out: Path) -> Path:
    """Write ``source`` as an ONNX file at ``out`` (static batch of one), simplified with onnxslim."""
    import onnx
    import onnxslim

    if source.framework == "onnx":
        model = onnx.load(str(source.onnx_path))
        if any(-1 in s.shape for s in source.input_specs or []):
            model = _fix_input_shapes(model, specs)
    elif source.is_tf:
        model = _tf_to_onnx(source, specs)
    else:
        model = _torch_to_onnx(source, specs)
    model = _spatial_means_as_pools(model)
    try:  # after the rewrite: onnxslim drops the axes it left unused
        slim = onnxslim.slim(model)
        model = slim if slim is not None else model
    except Exception as exc:  # onnxslim is an optimisation: keep the unsimplified graph
        logging.getLogger("edgekit").warning("onnxslim failed (%s); keeping the exported graph", exc)
    onnx.save(_at_least_opset(model), str(out))
    return out


def _spatial_means_as_pools(model):
    """Every ReduceMean over all spatial axes of a float (N, C, ...) tensor written as GlobalAveragePool (then
    Flatten where the mean dropped those axes): the same numbers, and an op int8 runtimes run in int8 (ONNX
    Runtime's channels-last QLinearGlobalAveragePool), where a ReduceMean stays float between layout changes."""
    import onnx
    from onnx import TensorProto, helper

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # a graph shape inference cannot follow (e.g. over 2 GB) is kept as it is
        return model
    floats = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*graph.input, *graph.value_info]
        if v.type.tensor_type.elem_type in floats and v.type.tensor_type.HasField("shape")
    }
    nodes = []
    for node in model.graph.node:
        rank = ranks.get(node.input[0], 0) if node.op_type == "ReduceMean" else 0
        if rank < 3:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axes = attrs.get("axes")
        if axes is None and len(node.input) > 1:
            axes = _constant(model.graph, node.input[1])
        if axes is None or sorted(int(a) % rank for a in np.ravel(axes)) != list(range(2, rank)):
            nodes.append(node)
        elif attrs.get("keepdims", 1):
            nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
        else:
            pooled = f"{node.output[0]}_pooled"
            nodes.append(helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
            nodes.append(helper.make_node("Flatten", [pooled], list(node.output), name=f"{node.name}_flatten", axis=1))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _constant(graph, name: str) -> np.ndarray | None:
    """The value of ``name`` when an initializer or a Constant node holds it."""
    import onnx
    from onnx import helper, numpy_helper

    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = helper.get_attribute_value(node.attribute[0])  # value (a tensor), value_ints, value_int, ...
            return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)
    return None


MIN_OPSET = 13  # per-channel QuantizeLinear/DequantizeLinear (their ``axis``) need opset 13


def _opset(model) -> int:
    """The model's default-domain (ai.onnx) opset; 0 when it imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _at_least_opset(model, version: int = MIN_OPSET):
    """The graph converted to opset ``version`` when it is older (e.g. opset-11 detectors): int8 graphs built
    from an older one are invalid. The conversion is checked against the original like any export."""
    import onnx
    from onnx import version_converter

    current = _opset(model) or version  # no default-domain import: nothing to lift
    if current >= version:
        return model
    try:
        converted = version_converter.convert_version(model, version)
        onnx.checker.check_model(converted)
    except Exception as exc:  # an op the converter cannot lift: keep the graph (int8 rows then say why)
        logging.getLogger("edgekit").warning("cannot convert opset %d to %d (%s)", current, version, exc)
        return model
    return converted


GELU_OPSET = 20  # ONNX Gelu


def gelus_as_one_op(model) -> tuple[object, int]:
    """Every exact GELU written out with Erf — 0.5·x·(1 + erf(x/√2)), its products in any order — as one ONNX
    ``Gelu`` (the graph lifted to opset 20 when it has one): the same function, and one op for converters that
    have a GELU of their own. Returns the model and how many were fused (0: the model unchanged)."""
    import onnx

    def matches(graph) -> list[tuple[str, list, str]]:
        erfs = [n for n in graph.node if n.op_type == "Erf"]
        if not erfs:
            return []
        producer = {out: n for n in graph.node for out in n.output}
        consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, []).append(node)
        outputs = {o.name for o in graph.output}
        found = (_gelu_at(graph, erf, producer, consumers, outputs) for erf in erfs)
        return [m for m in found if m is not None]

    if not matches(model.graph):
        return model, 0
    model = _at_least_opset(model, GELU_OPSET)
    found = matches(model.graph) if _opset(model) >= GELU_OPSET else []
    if not found:
        return model, 0
    graph = model.graph
    first = {id(nodes[0]): (x, y) for x, nodes, y in found}
    gone = {id(n) for _, nodes, _ in found for n in nodes}
    kept = []
    for node in graph.node:
        if id(node) in first:
            x, y = first[id(node)]
            kept.append(onnx.helper.make_node("Gelu", [x], [y], name=f"{y}_gelu"))
        elif id(node) not in gone:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    # the fused nodes' constants, unless something else (a subgraph included) still reads them
    freed = {name for _, nodes, _ in found for node in nodes for name in node.input} - _names_read(graph)
    for node in [n for n in graph.node if n.op_type == "Constant" and n.output[0] in freed]:
        graph.node.remove(node)
    for tensor in [t for t in graph.initializer if t.name in freed]:
        graph.initializer.remove(tensor)
    produced = {out for node in graph.node for out in node.output}
    for info in [v for v in graph.value_info if v.name not in produced]:
        graph.value_info.remove(info)
    onnx.checker.check_model(model)
    return model, len(found)


def _gelu_at(graph, erf, producer: dict, consumers: dict, outputs: set) -> tuple[str, list, str] | None:
    """(x, its nodes, y) when ``erf`` is the Erf of an exact GELU y = 0.5·x·(1 + erf(x/√2)), else None."""

    def single(name: str):
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and name not in outputs else None

    def scalar(name: str) -> float | None:
        value = _constant(graph, name)
        return float(value) if value is not None and value.size == 1 else None

    def operand(node, name: str) -> str:
        return node.input[1] if node.input[0] == name else node.input[0]

    scaled = producer.get(erf.input[0])
    if scaled is None or single(erf.input[0]) is not erf or scaled.op_type not in ("Div", "Mul"):
        return None
    if scaled.op_type == "Div":
        x, factor, root = scaled.input[0], scalar(scaled.input[1]), 2**0.5
    else:
        x = scaled.input[0] if scalar(scaled.input[0]) is None else scaled.input[1]
        factor, root = scalar(operand(scaled, x)), 2**-0.5
    if factor is None or abs(factor - root) > 1e-4:
        return None
    plus = single(erf.output[0])
    if plus is None or plus.op_type != "Add" or scalar(operand(plus, erf.output[0])) != 1.0:
        return None
    product = single(plus.output[0])
    if product is None or product.op_type != "Mul":
        return None
    nodes, other = [scaled, erf, plus, product], operand(product, plus.output[0])
    half = producer.get(other)
    in_half = half is not None and half.op_type == "Mul" and x in half.input and single(other) is product
    if in_half and scalar(operand(half, x)) == 0.5:  # (0.5·x)·(1 + erf)
        return x, [half, *nodes], product.output[0]
    last = single(product.output[0])
    if last is None or last.op_type != "Mul":
        return None
    factor_name = operand(last, product.output[0])
    if (other == x and scalar(factor_name) == 0.5) or (scalar(other) == 0.5 and factor_name == x):
        return x, [*nodes, last], last.output[0]
    return None


def _names_read(graph) -> set[str]:
    """Every tensor name the graph's nodes read, in subgraphs (If/Loop/Scan bodies) too, and its outputs."""
    from onnx import AttributeProto

    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            subgraphs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                names |= _names_read(sub)
    return names


def _fix_input_shapes(model, specs: list[TensorSpec]):
    """Give dynamic inputs the static shapes edge runtimes want, and re-infer the outputs' shapes."""
    import onnx

    shapes = {s.name: s.shape for s in specs}
    for value in model.graph.input:
        if value.name in shapes:
            for dim, size in zip(value.type.tensor_type.shape.dim, shapes[value.name], strict=True):
                dim.ClearField("dim_param")
                dim.dim_value = size
    for value in model.graph.output:
        value.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def _tf_to_onnx(source: SourceModel, specs: list[TensorSpec]):
    """tf2onnx; the graph's inputs keep the source's names and layout, with static shapes."""
    from edgekit.tf_source import to_onnx

    try:
        model = to_onnx(source.framework, source.module, source.location, specs, OPSET)
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError(
            f"tf2onnx cannot convert this {source.framework} model ({one_line(exc, 240)})",
            "report the model to edgekit; meanwhile export it to ONNX yourself and pass the .onnx",
        ) from exc
    if source.framework == "tflite":  # tf2onnx keeps the flatbuffer's (possibly dynamic) input shapes
        return _fix_input_shapes(model, specs) if any(-1 in s.shape for s in source.input_specs or []) else model
    return _rename_outputs(model)


def _torch_to_onnx(source: SourceModel, specs: list[TensorSpec]):
    import onnx
    import torch

    args = tuple(torch.from_numpy(np.zeros(s.shape, dtype=s.dtype)) for s in specs)
    module = source.module.module() if source.framework == "torch.export" else source.module
    names = [s.name for s in specs]
    errors = []
    for dynamo in (True, False):
        buf = io.BytesIO()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                prog = torch.onnx.export(
                    module,
                    args,
                    None if dynamo else buf,
                    input_names=names,
                    opset_version=OPSET,
                    dynamo=dynamo,
                    external_data=False,
                    verbose=False,
                )
            if dynamo:
                return _rename_outputs(prog.model_proto)
            return _rename_outputs(onnx.load_from_string(buf.getvalue()))
        except Exception as exc:
            errors.append(str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__)
    raise EdgekitError(
        f"the model fails to export to ONNX ({errors[0]})",
        "make forward() traceable by torch.export (no data-dependent Python control flow)",
    )


def _rename_outputs(model):
    """Name outputs ``output`` / ``output_i`` so reports and converters see stable names."""
    outs = model.graph.output
    new = ["output"] if len(outs) == 1 else [f"output_{i}" for i in range(len(outs))]
    for value, name in zip(outs, new, strict=True):
        old = value.name
        for node in model.graph.node:
            node.output[:] = [name if o == old else o for o in node.output]
            node.input[:] = [name if i == old else i for i in node.input]
        value.name = name
    return model


def onnx_output_specs(path: Path) -> list[TensorSpec]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    specs = []
    for v in model.graph.output:
        t = v.type.tensor_type
        specs.append(
            TensorSpec(
                v.name, tuple(d.dim_value for d in t.shape.dim), onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
            )
        )
    return specs


CALIB_METHODS = ("auto", "minmax", "entropy", "percentile")
INT8_MODES = ("auto", "static", "dynamic")
QUANTIZERS = ("nncf", "ort")
BIAS_CORRECTIONS = ("full", "fast", "none")


@dataclass(frozen=True)
class QuantConfig:
    """How int8 builds are calibrated; the same samples and settings feed every backend that offers them."""

    method: str = "auto"  # auto (NNCF: minmax or entropy, whichever is closer on the calibration set) | minmax | ...
    per_channel: bool = True  # weights: per output channel, else per tensor
    symmetric_activations: bool = False
    mode: str = "auto"  # auto: dynamic for MatMul models with token (integer) inputs, static otherwise
    quantizer: str = "nncf"  # static int8: nncf (with bias correction) | ort (ONNX Runtime's quantize_static)
    bias_correction: str = "full"  # NNCF's: full (layer by layer on the calibration set) | fast | none

    def __post_init__(self) -> None:
        for value, allowed, what in (
            (self.method, CALIB_METHODS, "calibration method"),
            (self.mode, INT8_MODES, "int8 mode"),
            (self.quantizer, QUANTIZERS, "quantizer"),
            (self.bias_correction, BIAS_CORRECTIONS, "bias correction"),
        ):
            if value not in allowed:
                raise EdgekitError(f"unknown {what} '{value}'", f"use one of {', '.join(allowed)}")

    def describe(self) -> str:
        weights = "per-channel" if self.per_channel else "per-tensor"
        acts = "symmetric" if self.symmetric_activations else "asymmetric"
        method = self.method
        if method == "auto":  # ONNX Runtime's quantizer: min/max; NNCF: the closer of min/max and histogram
            method = "auto (minmax or entropy)" if self.quantizer == "nncf" else "minmax"
        said = f"{method} calibration, {weights} weights, {acts} activations"
        if self.quantizer == "nncf":
            correction = "no" if self.bias_correction == "none" else self.bias_correction
            said += f", {correction} bias correction"
        return said


def int8_mode(onnx_path: Path, specs: list[TensorSpec], config: QuantConfig) -> str:
    """``static`` or ``dynamic``: dynamic for MatMul/Gemm graphs without convolutions fed by integer tokens."""
    if config.mode != "auto":
        return config.mode
    import onnx

    ops = {n.op_type for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    transformer_like = bool(ops & {"MatMul", "Gemm"}) and not ops & {"Conv", "ConvTranspose"}
    return "dynamic" if transformer_like and not has_float_inputs(specs) else "static"


def quantize_dynamic_int8(fp32: Path, out: Path, config: QuantConfig, workdir: Path) -> Path:
    """Dynamic int8 with ONNX Runtime: int8 weights, activations quantized per inference (MatMulInteger)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = workdir / "model.preprocessed.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    # Every MatMul, also attention's activation × activation ones (MatMulConstBOnly off): all-integer matmuls,
    # at no accuracy cost on MiniLM (mean cosine 0.9911 → 0.9911, worst sample 0.984 → 0.985).
    quantize_dynamic(
        str(pre),
        str(out),
        per_channel=config.per_channel,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": False},
    )
    pre.unlink()
    return out


def x86_without_vnni() -> bool:
    """This is an x86-64 CPU without VNNI: ORT's s8/u8×s8 int8 kernels (AVX2 vpmaddubsw) can saturate here."""
    import platform

    if platform.machine() != "x86_64":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "vnni" not in flags


def quantize_qdq(
    fp32: Path,
    out: Path,
    calib: Dataset,
    workdir: Path,
    config: QuantConfig = QuantConfig(),
    advance: Callable[[int], None] = lambda n: None,
) -> Path:
    """Static int8 PTQ with ONNX Runtime: QDQ format, symmetric int8 weights, calibrated activations."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 1
            advance(1)
            return calib.sample(self.i - 1)

    pre = workdir / "model.preprocessed.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    quantize_static(
        str(pre),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=config.per_channel,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        calibrate_method={
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }[config.method],
        # Keep Relu/Clip nodes (ORT would fold them into the Q ranges): the graph then stays correct when the
        # accuracy fallback takes a layer out of int8; ORT still fuses them when it runs the graph.
        extra_options={
            "ActivationSymmetric": config.symmetric_activations,
            "WeightSymmetric": True,
            "QDQKeepRemovableActivations": True,
        },
    )
    pre.unlink()
    return out


def has_float_inputs(specs: list[TensorSpec]) -> bool:
    return all(np.dtype(s.dtype).kind == "f" for s in specs)
