"""Core ML builds (iOS/macOS): an ML program ``.mlpackage`` converted by coremltools from the PyTorch model.

int8 is Core ML's weight quantization (linear, symmetric, per channel) with fp16 compute; ``--backend-option
coreml.palettize=N`` palettizes weights to N bits instead. Core ML runs only on Apple platforms: on Linux
the package is built and its program inspected (ops, I/O, stored weight types), never run.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from edgekit.converters.base import BuildContext, BuildResult, Converter, SkipBuild, io_by_name, write_manifest


def _load_traced(ctx: BuildContext):
    import torch

    if ctx.torch_model is None:
        raise SkipBuild("coreml: needs the PyTorch model (coremltools has no ONNX frontend); pass a PyTorch source")
    try:
        return torch.jit.load(str(ctx.torch_model), map_location="cpu").eval()
    except RuntimeError:  # not TorchScript: the pipeline's pickled nn.Module
        module = torch.load(ctx.torch_model, weights_only=False).eval()
    example = tuple(torch.from_numpy(ctx.calib.inputs[s.name][:1]) for s in ctx.inputs)
    with torch.no_grad():
        return torch.jit.trace(module, example)


def inspect_program(mlmodel) -> dict:
    """What the ML program holds, read on any OS: op counts and how weights are stored."""
    ops: Counter[str] = Counter()

    def walk(block) -> None:
        for op in block.operations:
            ops[op.op_type] += 1
            for inner in getattr(op, "blocks", []):
                walk(inner)

    walk(mlmodel._mil_program.functions["main"])
    compressed = {k: v for k, v in ops.items() if k.startswith("constexpr_")}
    return {"ops": dict(ops.most_common()), "compressed_weight_ops": compressed}


class CoreMlConverter(Converter):
    def build(self, ctx: BuildContext) -> BuildResult:
        import coremltools as ct

        self.check_precision(ctx.precision)
        settings = {"minimum_deployment_target": "iOS16", **ctx.target.options(self.name), **ctx.options}
        traced = _load_traced(ctx)
        mlmodel = ct.convert(
            traced,
            inputs=[ct.TensorType(name=s.name, shape=s.shape, dtype=np.dtype(s.dtype).type) for s in ctx.inputs],
            outputs=[ct.TensorType(name=s.name) for s in ctx.outputs],
            convert_to="mlprogram",
            minimum_deployment_target=getattr(ct.target, settings["minimum_deployment_target"]),
            compute_precision=ct.precision.FLOAT32 if ctx.precision == "fp32" else ct.precision.FLOAT16,
        )
        quant = "fp32 compute" if ctx.precision == "fp32" else "fp16 weights and compute"
        if ctx.precision == "int8":
            from coremltools.optimize.coreml import (
                OpLinearQuantizerConfig,
                OpPalettizerConfig,
                OptimizationConfig,
                linear_quantize_weights,
                palettize_weights,
            )

            bits = int(settings.get("palettize", 0))
            if bits:
                cfg = OptimizationConfig(global_config=OpPalettizerConfig(nbits=bits, mode="kmeans"))
                mlmodel = palettize_weights(mlmodel, config=cfg)
                quant = f"{bits}-bit palettized weights (k-means lookup tables), fp16 compute"
            else:
                cfg = OptimizationConfig(global_config=OpLinearQuantizerConfig(mode="linear_symmetric"))
                mlmodel = linear_quantize_weights(mlmodel, config=cfg)
                quant = "int8 weights (linear symmetric, per channel), fp16 compute (activation int8 needs macOS)"
        path = ctx.out_dir / f"model_{ctx.precision}.mlpackage"
        mlmodel.save(str(path))
        program = inspect_program(mlmodel)
        notes = [
            f"ML program for {settings['minimum_deployment_target']}+; "
            f"{sum(program['ops'].values())} ops; compressed weight ops: {program['compressed_weight_ops'] or 'none'}"
        ]
        result = BuildResult(self.name, ctx.precision, {"model": path.name}, notes, quant)
        write_manifest(ctx, result, io_by_name(ctx.inputs), io_by_name(ctx.outputs), program=program)
        return result
