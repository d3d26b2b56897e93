"""OpenVINO IR builds: ``ov.convert_model`` from ONNX, int8 through NNCF post-training quantization."""

from __future__ import annotations

import collections
import logging
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from edgekit.converters.base import BuildContext, BuildResult, Converter, Refused, io_by_name, write_manifest

from edgekit.errors import one_line
from edgekit.int8 import (
    calib_method,
    first_layer_bits,
    input_layers,
    is_transformer,
    nncf_advanced,
    nncf_quantize,
    quantizer,
)
from edgekit.onnx_hub import x86_without_vnni

# The CPU plugin's compute layer types (its runtime model names them so; depthwise is a Convolution too).
COMPUTE_LAYERS = {"Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm"}
# Left out of int8 on Arm: OpenVINO's Arm low-precision pipeline does not transform them (its
# GroupConvolutionTransformation is disabled there), so they run in float with fake quantization around them.
ARM_FLOAT_TYPES = ("GroupConvolution",)


class OpenVinoConverter(Converter):
    def build(self, ctx: BuildContext) -> BuildResult:
        import nncf
        import openvino as ov

        self.check_precision(ctx.precision)
        model = ov.convert_model(str(ctx.onnx_fp32))
        quant, notes = "", []
        if ctx.precision == "int8" and ctx.int8_mode == "dynamic":
            logging.getLogger("nncf").setLevel(logging.ERROR)
            model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
            quant = "int8 weights (NNCF weight compression); the CPU plugin quantizes activations per inference"
        elif ctx.precision == "int8":
            feeds = [ctx.calib.sample(i) for i in range(len(ctx.calib))]
            arm = ctx.target.arch in ("aarch64", "armv7l")
            # x86 without VNNI multiplies u8×s8 with 16-bit saturating sums: 7-bit weights in every layer avoid it
            # (8-bit weights there: EfficientNet-Lite0 top-1 agreement 29 %). The layers fed by the model's
            # inputs cost most with 7-bit weights and little time in float: they stay float (on the 240 held-out
            # photos, cosine 0.985 → 0.993).
            overflow = ctx.target.arch == "x86_64" and x86_without_vnni()
            first = input_layers(ctx.onnx_fp32) if overflow else []
            ignored = nncf.IgnoredScope(
                # OpenVINO keeps ONNX node names; a Conv's weights op is named "<node>/WithoutBiases". NNCF
                # matches patterns at the start of a name: "$" keeps "conv_1" from matching "conv_10".
                patterns=[f"{re.escape(n)}(/.*)?$" for n in (*ctx.float_nodes, *first)],
                types=list(ARM_FLOAT_TYPES) if arm else [],
                validate=False,
            )
            # The range estimator and the first layer's weight bits as the shared graph chose them (the closest to
            # the original); min/max where the shared graph was not made by NNCF and none was asked for.
            chosen = calib_method(ctx.onnx_qdq)
            method = ctx.quant.method if ctx.quant.method != "auto" else chosen or "minmax"
            settings = replace(ctx.quant, quantizer="nncf", method=method)
            if chosen:  # the shared graph's bias correction: fast where full failed on the ONNX graph
                settings = replace(settings, bias_correction=quantizer(ctx.onnx_qdq)[1] or "none")
            seven = first_layer_bits(ctx.onnx_qdq) == 7
            advanced, note = nncf_advanced(settings, overflow_everywhere=overflow, first_layer_7bit=seven)
            if ctx.quant.method == "auto":
                ranges = {"minmax": "min/max", "entropy": "histogram (MSE)"}[method]
                why = "as the shared int8 graph chose them" if chosen else "the shared int8 graph was not made by NNCF"
                note = f"calibration: NNCF's {ranges} ranges, {why}"
            transformer = is_transformer(ctx.onnx_fp32)
            try:
                model = nncf_quantize(model, feeds, settings, advanced, ignored, transformer)
            except Exception:  # NNCF's full bias correction fails on some graphs: its fast estimate still corrects
                if settings.bias_correction != "full":
                    raise
                settings = replace(settings, bias_correction="fast")
                advanced, _ = nncf_advanced(settings, overflow_everywhere=overflow, first_layer_7bit=seven)
                model = nncf_quantize(
                    ov.convert_model(str(ctx.onnx_fp32)), feeds, settings, advanced, ignored, transformer
                )
                notes.append("NNCF's full bias correction failed on this graph: fast bias correction instead")
            if transformer:
                notes.append("quantized as a transformer (NNCF's model type: SmoothQuant, LayerNorm and softmax float)")
            if ctx.float_nodes:
                notes.append(f"accuracy fallback: {len(ctx.float_nodes)} layer(s) kept in float (NNCF ignored scope)")
            if overflow:
                notes.append(
                    f"x86 without VNNI: 7-bit weights (NNCF overflow fix) in every layer but the {len(first)} fed "
                    "by the model's inputs, kept in float"
                )
            if note:
                notes.append(note)
            if ctx.quant.quantizer != "nncf":
                notes.append(f"asked for --quantizer {ctx.quant.quantizer}: OpenVINO is quantized by NNCF")
            quant = f"static int8 (NNCF PTQ on the OpenVINO IR, {settings.describe()}, {len(feeds)} samples)"
            if arm:
                kinds = [op.get_type_name() for op in model.get_ordered_ops()]
                depthwise = sum(kind in ARM_FLOAT_TYPES for kind in kinds)
                compute = sum(kind in COMPUTE_LAYERS for kind in kinds)
                notes.append(
                    "OpenVINO's CPU plugin documents its quantized (u8/i8) primitives for x86-64 only: on Arm it "
                    "runs int8 where its Arm executors have int8 kernels and the rest in fp16/fp32 (see executed); "
                    f"{depthwise} of the {compute} compute layers are depthwise convolutions, which its Arm "
                    "low-precision pipeline never runs in int8 (GroupConvolutionTransformation is disabled there), so "
                    f"at most {compute - depthwise} can; they are left unquantized (quantizing them only added "
                    "rounding and fake-quantize work: EfficientNet-Lite0 on an emulated Cortex-A76, 3.1 s instead of "
                    "11.3 s per inference, cosine 0.986 instead of 0.983)"
                )
            if arm and not ctx.quant.symmetric_activations:
                notes.append(
                    "Arm: --symmetric-activations runs more layers in int8 here (OpenVINO's Arm int8 executors "
                    "take no activation zero points) at some accuracy: EfficientNet-Lite0 on an emulated "
                    "Cortex-A76, 27 vs 18 of 50 compute layers, top-1 agreement 83 % vs 91 % (its depthwise "
                    "convolutions quantized)"
                )
        elif ctx.precision == "fp16":
            quant = "fp16 weights (decompressed to fp32 at load on CPUs without fp16 arithmetic)"
        xml = ctx.out_dir / f"model_{ctx.precision}.xml"
        ov.save_model(model, str(xml), compress_to_fp16=ctx.precision == "fp16")
        result = BuildResult(
            self.name,
            ctx.precision,
            {"model": xml.name, "weights": xml.with_suffix(".bin").name},
            notes=notes,
            quantization=quant,
        )
        # OpenVINO's CPU plugin defaults to bf16 on CPUs with AVX512-BF16 and to f16 on Arm: pin f32 so the check
        # is honest (the float layers of EfficientNet-Lite0's int8 build in f16 on an emulated Cortex-A76: 2x
        # faster, top-1 agreement 76 % instead of 91 %).
        write_manifest(ctx, result, io_by_name(ctx.inputs), io_by_name(ctx.outputs), inference_precision="f32")
        return result

    def executed(self, build_dir: Path, manifest: dict, measured: dict, work: Path) -> dict:
        """From the device's runtime precisions (every executed layer, as OpenVINO reports them)."""
        from edgekit.executed import summary

        precisions = measured.get("runtime_precisions")
        if not precisions:
            return super().executed(build_dir, manifest, measured, work)
        int8, floating = 0, {}
        for kind, counts in precisions.items():
            if kind in COMPUTE_LAYERS:
                int8 += sum(n for p, n in counts.items() if p in ("i8", "u8"))
                floating.update({f"{kind} {p}": n for p, n in counts.items() if p not in ("i8", "u8")})
        return summary(int8, sum(floating.values()), "OpenVINO runtime precision per executed layer", floating)

    def layer_tensors(self, build_dir: Path, manifest: dict, feed: dict, wanted: set[str]) -> tuple[dict, str]:
        """Intermediate tensors read from the OpenVINO runtime (IRs keep ONNX tensor names)."""
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(build_dir / manifest["artifacts"]["model"]))
        outputs = []
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("Parameter", "Constant", "Result"):
                continue
            outputs += [port for port in op.outputs() if port.get_names() & wanted]
        model.add_outputs(outputs)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        result = compiled.create_infer_request().infer(feed)
        found = {}
        for port in compiled.outputs:
            for name in port.get_names():
                if name in wanted:
                    found[name] = np.asarray(result[port])
        return found, "OpenVINO runtime"

    def missing_ops(self, graph: Path, ops: dict[str, int], module=None) -> dict[str, int]:
        """Operators the CPU plugin does not support (``query_model``)."""
        import openvino as ov

        try:
            model = ov.convert_model(str(graph))
        except Exception as exc:
            raise Refused(f"OpenVINO cannot convert the graph ({one_line(exc, 200)})") from exc
        supported = ov.Core().query_model(model, "CPU")
        skip = ("Parameter", "Result", "Constant")
        return dict(
            collections.Counter(
                op.get_type_name()
                for op in model.get_ordered_ops()
                if op.get_friendly_name() not in supported and op.get_type_name() not in skip
            )
        )
