"""LiteRT (TFLite) builds with onnx2tf: float32, float16, or full-integer int8 calibrated on real data.

onnx2tf runs in a scratch folder fed with the calibration set (it would otherwise fetch sample images
from the internet). Layouts become channels-last; ``build.json`` records the permutations and the
mapping of every ONNX input/output to its TFLite tensor so runners feed and read the build correctly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from edgekit.converters.base import (
    BuildContext,
    BuildResult,
    Converter,
    channels_last_perm,
    inverse_perm,
    write_manifest,
)

from edgekit.errors import one_line
from edgekit.onnx_hub import has_float_inputs

ONNX2TF_TIMEOUT_S = 1800
SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
TFLITE_COMPUTE = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV", "CONV_3D"}
CHECKED_SAMPLES = 32  # calibration samples a full-integer build must run at build time
SUFFIX = {"fp32": "float32", "fp16": "float16", "int8": "full_integer_quant", "int8-dynamic": "dynamic_range_quant"}


class TfliteConverter(Converter):
    def build(self, ctx: BuildContext) -> BuildResult:
        self.check_precision(ctx.precision)
        if ctx.tf_model is not None:
            native = self._build_native(ctx)
            if native is not None:
                return native
        static = ctx.precision == "int8" and has_float_inputs(ctx.inputs) and ctx.int8_mode == "static"
        try:
            return self._onnx2tf(ctx, ctx.work_dir / "onnx2tf", static)
        except _FullIntegerFailed as exc:
            # the graph converts, its full-integer quantization does not: dynamic-range int8 still ships int8
            why = f"full-integer int8 failed ({exc}): built as dynamic-range int8 instead"
            return self._onnx2tf(ctx, ctx.work_dir / "onnx2tf_dynamic", static=False, dynamic_why=why)

    def _onnx2tf(self, ctx: BuildContext, work: Path, static: bool, dynamic_why: str = "") -> BuildResult:
        """One onnx2tf run in a scratch folder (its output goes to the build's log); ``dynamic_why``: why an
        int8 build is dynamic-range."""
        work.mkdir(parents=True, exist_ok=True)
        # onnx2tf rewrites its input file in place (onnxsim): give it a copy, never the shared graph
        graph = Path(shutil.copyfile(ctx.onnx_fp32, work / "model.onnx"))
        notes: list[str] = []
        cmd = [sys.executable, "-m", "onnx2tf", "-i", str(graph), "-o", "out"]
        variant, quant = ctx.precision, ""
        perms = {s.name: channels_last_perm(s.shape) for s in ctx.inputs}
        if static:
            corrected = _corrected_biases(ctx, graph)
            weights = "per-channel" if ctx.quant.per_channel else "per-tensor"
            cmd += ["-oiqt", "-qt", weights]
            for pos, spec in enumerate(ctx.inputs):
                data = ctx.calib.inputs[spec.name]
                perm = perms[spec.name]
                data = data.transpose(perm) if perm else data
                np.save(work / f"calib_{pos}.npy", data.astype(np.float32))
                mean, std = (json.dumps(np.full((1,) * data.ndim, v).tolist()) for v in (0.0, 1.0))
                cmd += ["-cind", spec.name, f"calib_{pos}.npy", mean, std]
            if ctx.float_nodes:
                notes.append("accuracy fallback not applied: onnx2tf has no per-layer deny list (all layers int8)")
            quant = (
                f"full-integer int8 (int8 inputs/outputs), {weights} weights, min/max calibration on "
                f"{len(ctx.calib)} samples, asymmetric activations (onnx2tf/TFLiteConverter){corrected}"
            )
            if ctx.quant.method not in ("auto", "minmax") or ctx.quant.symmetric_activations:
                notes.append(
                    f"asked for {ctx.quant.describe()}: the TFLite converter offers only min/max calibration "
                    "with asymmetric int8 activations"
                )
        elif ctx.precision == "int8":
            cmd += ["-odrqt"]
            variant = "int8-dynamic"
            quant = "dynamic-range int8: int8 weights, activations quantized per inference"
            if not dynamic_why:
                dynamic_why = (
                    "dynamic int8 asked for (--int8-mode dynamic)"
                    if has_float_inputs(ctx.inputs)
                    else "built as dynamic-range int8: the model has token (integer) inputs"
                )
            notes.append(dynamic_why)
        elif ctx.precision == "fp16":
            quant = "fp16 weights, fp32 compute where the delegate lacks fp16"
        gelus = _gelus_as_builtin(graph)  # after the bias correction rewrote the copy
        if gelus:
            why = (
                ": int8 through its lookup table (onnx2tf's Erf from builtin ops divides by |x| + ε)" if static else ""
            )
            notes.append(f"{gelus} exact GELU(s) (Erf) built as TFLite's GELU op{why}")
        if "Erf" in {n.op_type for n in onnx.load(str(graph), load_external_data=False).graph.node}:
            # LiteRT has no builtin Erf: onnx2tf's builtin-op approximation avoids a Flex (TF) op.
            cmd += ["-rtpo", "Erf"]
            notes.append("Erf built from builtin ops (onnx2tf pseudo-op): no TensorFlow Flex delegate")
        # onnx2tf fetches a sample file from the internet unless this file is in its working folder (for every
        # precision): give it our real calibration data instead.
        np.save(work / SAMPLE_FILE, ctx.calib.inputs[ctx.inputs[0].name][:20].astype(np.float32))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", "PYTHONWARNINGS": "ignore"}
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=ONNX2TF_TIMEOUT_S)
        output = re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout + proc.stderr)
        sys.stderr.write(f"onnx2tf ({' '.join(cmd[3:])}):\n{output}\n")
        produced = sorted((work / "out").glob(f"*_{SUFFIX[variant]}.tflite")) if (work / "out").exists() else []
        if not produced:
            error = _onnx2tf_error(output, proc.returncode)
            if static and list((work / "out").glob("*_float32.tflite")):  # the float model converted
                raise _FullIntegerFailed(f"{error} in its int8 quantization")
            raise RuntimeError(f"onnx2tf failed: {error}")
        dst = ctx.out_dir / f"model_{ctx.precision}.tflite"
        produced[0].replace(dst)
        try:
            inputs, outputs = self._map_io(ctx, dst, perms)
            if static:
                _runs_the_calibration_set(ctx, dst, inputs, outputs)
        except RuntimeError as exc:  # e.g. an int8 kernel that refuses its quantized operands at run time
            if static:
                dst.unlink()
                raise _FullIntegerFailed(f"the int8 model does not run: {one_line(exc)}") from exc
            raise
        result = BuildResult(self.name, ctx.precision, {"model": dst.name}, notes=notes, quantization=quant)
        write_manifest(ctx, result, inputs, outputs)
        return result

    def _build_native(self, ctx: BuildContext) -> BuildResult | None:
        """TensorFlow sources: TFLite's own converter on the SavedModel, or the source flatbuffer itself.

        None when the source is a float ``.tflite`` asked for fp16/int8: that goes through ONNX (onnx2tf).
        """
        from edgekit.tf_source import tflite_is_quantized

        dst = ctx.out_dir / f"model_{ctx.precision}.tflite"
        source = ctx.tf_model
        if source.suffix == ".tflite":
            quantized = tflite_is_quantized(source)
            if not quantized and ctx.precision != "fp32":
                return None
            shutil.copyfile(source, dst)
            precision = "int8" if quantized else "fp32"
            notes = ["the source .tflite itself, unchanged (no round trip through ONNX)"]
            if quantized and ctx.precision != "int8":
                notes.append(f"asked for {ctx.precision}: the source is already quantized to int8; shipped as is")
            quant = "as quantized by the source's author" if quantized else ""
        else:
            precision, notes = ctx.precision, ["TFLiteConverter on the TensorFlow source (no round trip through ONNX)"]
            quant = _convert_saved_model(ctx, source, dst)
        perms = {s.name: channels_last_perm(s.shape) for s in ctx.inputs}
        inputs, outputs = self._map_io(ctx, dst, perms)
        result = BuildResult(self.name, precision, {"model": dst.name}, notes=notes, quantization=quant)
        write_manifest(ctx, result, inputs, outputs)
        return result

    @staticmethod
    def _map_io(ctx: BuildContext, model_path, perms: dict) -> tuple[list[dict], list[dict]]:
        """Match ONNX inputs/outputs to TFLite tensors (names, shapes, then values on a real sample)."""
        import onnxruntime as ort
        from ai_edge_litert.interpreter import Interpreter

        from .runtime import load as load_tflite

        interp = Interpreter(model_path=str(model_path))
        interp.allocate_tensors()
        details = interp.get_input_details()
        inputs = []
        for pos, spec in enumerate(ctx.inputs):
            perm = perms[spec.name]
            want = tuple(np.array(spec.shape)[perm]) if perm else spec.shape
            idx = next(
                (i for i, d in enumerate(details) if re.sub(r"^serving_default_|:0$", "", d["name"]) == spec.name), pos
            )
            if tuple(details[idx]["shape"]) != want and tuple(details[idx]["shape"]) == spec.shape:
                perm = None
            raw = np.dtype(spec.dtype).kind in "iu" and np.dtype(details[idx]["dtype"]) == np.dtype(spec.dtype)
            inputs.append({"name": spec.name, "index": idx, "perm": perm, "raw": raw})
        feed = ctx.calib.sample(0)
        reference = ort.InferenceSession(str(ctx.onnx_fp32), providers=["CPUExecutionProvider"]).run(None, feed)
        out_details = interp.get_output_details()
        integer_outputs = {np.dtype(s.dtype) for s in ctx.outputs if np.dtype(s.dtype).kind in "iu"}
        raw = [np.dtype(d["dtype"]) in integer_outputs for d in out_details]  # the source's own int8 outputs
        candidates = [{"index": i, "raw": raw[i]} for i in range(len(out_details))]
        probe, _ = load_tflite(
            model_path.parent, {"artifacts": {"model": model_path.name}, "inputs": inputs, "outputs": candidates}, 1
        )
        produced = probe(feed)
        outputs, used = [], set()
        for spec, ref in zip(ctx.outputs, reference, strict=True):
            best = None
            for i, y in enumerate(produced):
                if i in used:
                    continue
                for perm in (None, inverse_perm(channels_last_perm(ref.shape))):
                    if perm is not None and y.ndim != len(perm):
                        continue
                    z = y.transpose(perm) if perm else y
                    if z.shape == ref.shape:
                        err = float(np.abs(z.astype(np.float32) - ref).mean())
                        if best is None or err < best[0]:
                            best = (err, i, perm)
            if best is None:
                raise RuntimeError(f"no TFLite output matches ONNX output '{spec.name}' of shape {ref.shape}")
            used.add(best[1])
            outputs.append({"name": spec.name, "index": best[1], "perm": best[2], "raw": raw[best[1]]})
        return inputs, outputs

    def executed(self, build_dir: Path, manifest: dict, measured: dict, work: Path) -> dict:
        """Compute ops whose activation or weight tensors are 8-bit (full-integer or dynamic-range kernels)."""
        from ai_edge_litert.interpreter import Interpreter

        from edgekit.executed import summary

        interp = Interpreter(model_path=str(build_dir / manifest["artifacts"]["model"]))
        types = {t["index"]: t["dtype"].__name__ for t in interp.get_tensor_details()}
        int8 = floating = 0
        for op in interp._get_ops_details():  # LiteRT's only op listing API
            if op["op_name"] not in TFLITE_COMPUTE:
                continue
            inputs = [types.get(i, "") for i in op["inputs"][:2] if i >= 0]
            if any(t in ("int8", "uint8") for t in inputs):
                int8 += 1
            else:
                floating += 1
        return summary(int8, floating, "TFLite tensor types of compute ops")

    def missing_ops(self, graph: Path, ops: dict[str, int], module=None) -> dict[str, int]:
        """ONNX operators onnx2tf has no converter for (its op modules listed without importing it and
        TensorFlow: no start-up time, no TensorFlow log lines)."""
        import importlib.util

        package = importlib.util.find_spec("onnx2tf")
        folders = package.submodule_search_locations if package else []
        known = {p.stem for folder in folders for p in (Path(folder) / "ops").glob("*.py")}
        return {op: n for op, n in ops.items() if op not in known}


def _corrected_biases(ctx: BuildContext, graph: Path) -> str:
    """Give onnx2tf's copy of the graph the biases NNCF corrected in the shared int8 graph; said for the row."""
    from edgekit.int8 import quantizer, with_corrected_biases

    if ctx.onnx_qdq is None:
        return "; no bias correction (the shared int8 graph was not made)"
    how, biases = quantizer(ctx.onnx_qdq)
    if not biases:
        return f"; no bias correction (the shared int8 graph: {how})"
    count = with_corrected_biases(ctx.onnx_fp32, ctx.onnx_qdq, graph)
    return f"; {count} biases corrected by NNCF ({biases} bias correction of the shared int8 graph)"


class _FullIntegerFailed(RuntimeError):
    """onnx2tf converted the graph but its full-integer int8 model failed to build or to run."""


def _runs_the_calibration_set(ctx: BuildContext, model_path: Path, inputs: list, outputs: list) -> None:
    """Run a full-integer model on (up to 32 of) the calibration samples: an int8 kernel that refuses its operands
    on some inputs (e.g. a divisor at its zero point) fails here, while a dynamic-range build can replace it."""
    from .runtime import load as load_tflite

    run, _ = load_tflite(
        model_path.parent, {"artifacts": {"model": model_path.name}, "inputs": inputs, "outputs": outputs}, 1
    )
    for i in range(1, min(len(ctx.calib), CHECKED_SAMPLES)):
        run(ctx.calib.sample(i))


def _gelus_as_builtin(graph: Path) -> int:
    """Fuse the exact GELUs of onnx2tf's copy of the graph into ONNX Gelu ops (rewritten in place)."""
    from edgekit.onnx_hub import gelus_as_one_op

    try:
        model, fused = gelus_as_one_op(onnx.load(str(graph)))
    except Exception as exc:  # an optimisation: onnx2tf gets the graph as it is
        sys.stderr.write(f"GELU fusion skipped: {one_line(exc)}\n")
        return 0
    if fused:
        onnx.save(model, str(graph))
    return fused


def _onnx2tf_error(log: str, returncode: int) -> str:
    """The line of onnx2tf's output that says what failed (its crash signal when it died)."""
    benign = re.compile(r"onnxsim|Failed to optimize the onnx file")  # onnx2tf's optional simplifier is not installed
    lines = [ln.strip() for ln in log.splitlines() if ln.strip() and not benign.search(ln)]
    errors = [ln for ln in lines if re.search(r"error|exception|not supported|unsupported", ln, re.I)]
    text = errors[-1] if errors else (lines[-1] if lines else "no output")
    if returncode < 0:  # its last lines are then whatever it printed before, not the cause
        known = -returncode in signal.valid_signals()
        return f"onnx2tf crashed ({signal.Signals(-returncode).name if known else f'signal {-returncode}'})"
    return text[:300]


def _convert_saved_model(ctx: BuildContext, saved_model, dst) -> str:
    """TFLiteConverter on a SavedModel: fp32, fp16 weights, dynamic-range or full-integer int8 (float I/O)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    quant = ""
    if ctx.precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        quant = "fp16 weights, fp32 compute where the delegate lacks fp16"
    elif ctx.precision == "int8" and ctx.int8_mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        quant = "dynamic-range int8: int8 weights, activations quantized per inference"
    elif ctx.precision == "int8":
        names = [spec.name for spec in ctx.inputs]

        def samples():
            for i in range(len(ctx.calib)):
                yield {n: ctx.calib.inputs[n][i : i + 1] for n in names}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter._experimental_disable_per_channel = not ctx.quant.per_channel
        weights = "per-channel" if ctx.quant.per_channel else "per-tensor"
        quant = (
            f"full-integer int8 compute (float32 inputs/outputs), {weights} weights, min/max calibration on "
            f"{len(ctx.calib)} samples (TFLiteConverter)"
        )
    dst.write_bytes(converter.convert())
    return quant
