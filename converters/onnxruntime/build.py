"""ONNX Runtime builds: fp32/fp16 ONNX, or edgekit's shared int8 graph (NNCF QDQ or dynamic)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import onnx
from edgekit.converters.base import (
    BuildContext,
    BuildResult,
    Converter,
    Refused,
    built_from,
    io_by_name,
    write_manifest,
)

from edgekit.errors import one_line
from edgekit.int8 import calib_method, quantize_7bit, quantize_biases, quantizer, to_s8s8, to_u8s8, to_u8u8
from edgekit.onnx_hub import x86_without_vnni


class OnnxRuntimeConverter(Converter):
    def build(self, ctx: BuildContext) -> BuildResult:
        self.check_precision(ctx.precision)
        dst = ctx.out_dir / f"model_{ctx.precision}.onnx"
        quant = ""
        notes = []
        if ctx.precision == "int8":
            if ctx.int8_mode == "static":
                model = quantize_biases(onnx.load(str(ctx.onnx_qdq)))  # int32 biases: ORT's QGemm needs them
                if ctx.target.arch == "x86_64" and x86_without_vnni():
                    model, quant = self._without_vnni(ctx, model, notes)
                elif ctx.target.arch in ("aarch64", "armv7l"):
                    model = to_s8s8(model)
                    notes.append(
                        "Arm: every activation stored as int8 (the same values), so each layer fuses into ORT's "
                        "signed int8 kernels (S8S8, dot-product instructions where the CPU has them)"
                    )
                onnx.save(model, str(dst))
            else:
                shutil.copyfile(ctx.onnx_qdq, dst)
            if ctx.int8_mode == "dynamic":
                quant = "dynamic int8 (int8 weights, activations quantized per inference; MatMulInteger)"
            else:
                quant = f"static int8 QDQ: {quant or quantizer(ctx.onnx_qdq)[0]}"
            if ctx.float_nodes:
                quant += f"; {len(ctx.float_nodes)} layer(s) kept in float (accuracy fallback)"
        elif ctx.precision == "fp16":
            from onnxruntime.transformers.float16 import convert_float_to_float16

            model = convert_float_to_float16(onnx.load(str(ctx.onnx_fp32)), keep_io_types=True)
            onnx.save(model, str(dst))
            quant = "fp16 weights and activations, fp32 inputs/outputs"
        else:
            shutil.copyfile(ctx.onnx_fp32, dst)
        artifacts = {"model": dst.name}
        if ctx.target.options(self.name).get("format") == "ort":
            artifacts = to_ort_format(dst, ctx.work_dir, ctx.target.arch)
            notes.append(
                "ONNX Runtime Mobile: ORT format, optimized for Arm ahead of time ('Fixed' style); "
                f"{artifacts['operators']} lists the operators a reduced-size ORT build must include"
            )
        result = BuildResult(self.name, ctx.precision, artifacts, notes, quantization=quant)
        write_manifest(ctx, result, io_by_name(ctx.inputs), io_by_name(ctx.outputs))
        return result

    @staticmethod
    def _without_vnni(ctx: BuildContext, shared, notes: list[str]) -> tuple[onnx.ModelProto, str]:
        """x86 without VNNI: ORT's fast u8×s8 AVX2 kernels add pairs of products in saturating 16-bit sums. NNCF
        quantizes again with 7-bit weights (no sum can saturate), stored U8S8; where NNCF did not make the
        shared graph (or fails now), the shared graph stored U8U8, exact on the slower kernels. Returns the graph
        and how it was quantized ("" for the shared graph's way)."""
        if calib_method(ctx.onnx_qdq):
            try:
                graph, first, said = quantize_7bit(ctx.onnx_fp32, ctx.onnx_qdq, ctx.calib, ctx.quant, ctx.float_nodes)
            except Exception as exc:  # NNCF's graph matching: the shared graph still runs, exactly
                notes.append(f"NNCF's 7-bit-weight graph failed ({one_line(exc, 160)})")
            else:
                notes.append(
                    "x86 without VNNI: ORT's fast u8×s8 AVX2 kernels add products in saturating 16-bit sums, so "
                    "this build is quantized again by NNCF with 7-bit weights (its overflow fix: no sum can "
                    f"saturate) and uint8 activations (U8S8), the {len(first)} layer(s) fed by the model's inputs "
                    "kept in float (the shared graph's 8-bit weights need the slower U8U8 kernels here)"
                )
                return to_u8s8(quantize_biases(graph)), said
        notes.append(
            "x86 without VNNI: the int8 graph stored as uint8 weights and activations (U8U8, the same values), "
            "because ORT's signed-weight AVX2 kernels saturate 16-bit sums here"
        )
        return to_u8u8(shared), ""

    @staticmethod
    def graph(build_dir: Path, manifest: dict) -> Path:
        """The ONNX graph the build runs: its own .onnx, or (ORT format) the graph it was made from."""
        model = build_dir / manifest["artifacts"]["model"]
        return model if model.suffix == ".onnx" else built_from(build_dir, manifest)

    def executed(self, build_dir: Path, manifest: dict, measured: dict, work: Path) -> dict:
        """int8 vs float compute kernels: those ORT ran on the device (its profiler), else those in the graph
        ORT runs after its optimizations on this host."""
        from edgekit.executed import onnx_counts, onnx_kernels, summary

        kernels = measured.get("runtime_precisions")
        if kernels:
            int8, floating = onnx_kernels(kernels)
            return summary(int8, sum(floating.values()), "ONNX Runtime kernels run on the device", floating)
        import onnxruntime as ort

        optimized = work / "ort_optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(self.graph(build_dir, manifest)), opts, providers=["CPUExecutionProvider"])
        return summary(*onnx_counts(onnx.load(str(optimized))), "ONNX Runtime graph after optimization (this host)")

    def layer_tensors(self, build_dir: Path, manifest: dict, feed: dict, wanted: set[str]) -> tuple[dict, str]:
        from edgekit.diff import onnx_intermediates

        graph = self.graph(build_dir, manifest)
        return onnx_intermediates(graph, feed), f"ONNX graph {graph.name} (what {self.name} runs)"

    def missing_ops(self, graph: Path, ops: dict[str, int], module=None) -> dict[str, int]:
        from edgekit.errors import EdgekitError
        from edgekit.source import _check_onnx_runs

        try:
            _check_onnx_runs(graph)
        except EdgekitError as exc:
            raise Refused(exc.problem) from exc
        return {}


def to_ort_format(onnx_path: Path, work: Path, arch: str) -> dict[str, str]:
    """Convert with ORT's own tool; the .onnx is replaced by ``.ort`` + ``.required_operators.config``."""
    src = work / "ort_src"
    src.mkdir(parents=True, exist_ok=True)
    shutil.move(onnx_path, src / onnx_path.name)
    platform = "arm" if arch in ("aarch64", "armv7l") else "amd64"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(src),
            "--output_dir",
            str(work / "ort_out"),
            "--optimization_style",
            "Fixed",
            "--target_platform",
            platform,
        ],
        capture_output=True,
        text=True,
    )
    produced = sorted((work / "ort_out").glob("*.ort"))
    if proc.returncode != 0 or not produced:
        tail = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()][-1:] or ["no output"]
        raise RuntimeError(f"ORT format conversion failed: {tail[0][:200]}")
    model = onnx_path.with_suffix(".ort")
    shutil.move(produced[0], model)
    config = onnx_path.with_suffix(".required_operators.config")
    shutil.move(next((work / "ort_out").glob("*.config")), config)
    return {"model": model.name, "operators": config.name}
