"""ONNX Runtime builds: fp32/fp16 ONNX, or the static int8 QDQ graph (ORT quantization)."""

from __future__ import annotations

import shutil

import onnx
from edgekit.converters.base import BuildContext, BuildResult, Converter, io_by_name, write_manifest


class OnnxRuntimeConverter(Converter):
    name = "onnxruntime"
    precisions = ("fp32", "fp16", "int8")

    def build(self, ctx: BuildContext) -> BuildResult:
        self.check_precision(ctx.precision)
        dst = ctx.out_dir / f"model_{ctx.precision}.onnx"
        quant = ""
        if ctx.precision == "int8":
            shutil.copyfile(ctx.onnx_qdq, dst)
            quant = "static int8 QDQ, per-channel weights, MinMax calibration (onnxruntime.quantization)"
            if ctx.float_nodes:
                quant += f"; {len(ctx.float_nodes)} layer(s) kept in float (accuracy fallback)"
        elif ctx.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(ctx.onnx_fp32)), keep_io_types=True)
            onnx.save(model, str(dst))
            quant = "fp16 weights and activations, fp32 inputs/outputs"
        else:
            shutil.copyfile(ctx.onnx_fp32, dst)
        result = BuildResult(self.name, ctx.precision, {"model": dst.name}, quantization=quant)
        write_manifest(ctx, result, io_by_name(ctx.inputs), io_by_name(ctx.outputs))
        return result
