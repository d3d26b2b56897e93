"""FPGA builds with hls4ml: a Vitis/Vivado/oneAPI HLS project from the PyTorch model, plus its bit-accurate
C-simulation library (built with g++ here) that the host runner feeds the held-out data.

Fixed-point types come from the calibration data: each layer's integer bits cover the largest value its
weights and outputs reach (plus headroom); widths follow the precision asked for (int8: 8-bit weights,
16-bit activations; fp32/fp16: 16-bit everywhere). Reuse factors keep every layer within the HLS
unroll limit of a fully parallel design. Per-layer overrides come from ``--hls-config``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from edgekit.converters.base import BuildContext, BuildResult, Converter, SkipBuild, io_by_name, write_manifest

from edgekit.errors import EdgekitError

PROJECT = "edgekit_model"
# Vivado/Vitis HLS refuses to fully unroll (io_parallel) a layer with more multiplications per reuse
# cycle than this ("partition limit"), and fully parallel designs stop fitting devices well before.
MAX_MULTS_PER_CYCLE = 4096
MAX_PARALLEL_WEIGHTS = 200_000


def fixed(width: int, max_abs: float, headroom_bits: int = 1, saturate: bool = False) -> str:
    """``ap_fixed<width, int_bits>`` with enough integer bits (sign included) for ``max_abs``;
    ``saturate`` adds convergent rounding and saturation (activations) instead of truncation and wrap-around."""
    int_bits = 1 + headroom_bits + max(0, math.ceil(math.log2(max_abs + 1e-12))) if max_abs > 0 else 2
    mode = ",AP_RND_CONV,AP_SAT" if saturate else ""
    return f"ap_fixed<{width},{min(int_bits, width - 1)}{mode}>"


def _layer_stats(module, calib, names: list[str]) -> dict[str, dict[str, float]]:
    """Largest |output| per leaf module over the calibration data, and largest |weight|/|bias|."""
    import torch

    stats: dict[str, dict[str, float]] = {}
    hooks = []
    for name, m in module.named_modules():
        if list(m.children()) or not name:
            continue
        key = name.replace(".", "_")
        entry = stats.setdefault(key, {"result": 0.0})
        for pname in ("weight", "bias"):
            p = getattr(m, pname, None)
            if isinstance(p, torch.Tensor):
                entry[pname] = float(p.detach().abs().max())

        def hook(_m, _i, out, entry=entry):
            entry["result"] = max(entry["result"], float(out.detach().abs().max()))

        hooks.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            for i in range(0, len(calib), 64):
                module(*[torch.from_numpy(calib.inputs[n][i : i + 64]) for n in names])
    finally:
        for h in hooks:
            h.remove()
    return stats


def _mults(module) -> dict[str, int]:
    """Multiplications per output pixel (conv) or per inference (dense) of each conv/linear layer."""
    from torch import nn

    found = {}
    for name, m in module.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            found[name.replace(".", "_")] = m.weight.numel()
        elif isinstance(m, nn.Linear):
            found[name.replace(".", "_")] = m.in_features * m.out_features
    return found


def _merge(base: dict, override: dict) -> dict:
    for key, value in override.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


class Hls4mlConverter(Converter):
    def build(self, ctx: BuildContext) -> BuildResult:
        import hls4ml
        import torch

        self.check_precision(ctx.precision)
        if ctx.torch_model is None or ctx.torch_model.suffix != ".pt" or _is_torchscript(ctx.torch_model):
            raise SkipBuild("hls4ml: needs the model as a PyTorch nn.Module (module:callable); not built from ONNX")
        fpga = {
            "part": "xcu250-figd2104-2L-e",
            "backend": "Vitis",
            "io_type": "io_parallel",
            "clock_period": 5,
            **ctx.target.extra.get("fpga", {}),
        }
        # BatchNorm folded into the convolutions first, so the calibrated ranges are those of the fused weights.
        module = fuse(torch.load(ctx.torch_model, weights_only=False).eval())
        names = [s.name for s in ctx.inputs]
        if len(names) != 1:
            raise SkipBuild("hls4ml: one input tensor only")
        weights = sum(p.numel() for p in module.parameters())
        mults = _mults(module)
        worst = max(mults.values(), default=0)
        if fpga["io_type"] == "io_parallel" and weights > MAX_PARALLEL_WEIGHTS:
            raise EdgekitError(
                f"the model has {weights:,} weights; a fully parallel (io_parallel) hls4ml design holds at most "
                f"~{MAX_PARALLEL_WEIGHTS:,} on chip (largest layer: {worst:,} multiplications)",
                f'set io_type = "io_stream" in the target\'s [fpga] table with a reuse factor ≥ '
                f"{math.ceil(worst / MAX_MULTS_PER_CYCLE)} (--hls-config), or prune/shrink the model",
            )
        config = hls4ml.utils.config_from_pytorch_model(
            module,
            input_shape=tuple(ctx.inputs[0].shape[1:]),
            granularity="name",
            backend=fpga["backend"],
            default_precision="ap_fixed<16,6>",
        )
        w_bits, a_bits = (8, 16) if ctx.precision == "int8" else (16, 16)
        stats = _layer_stats(module, ctx.calib, names)
        layers = config["LayerName"]
        reuse = {}
        for layer, entry in layers.items():
            s = stats.get(layer)
            if s is None:
                continue
            precision = entry.setdefault("Precision", {})
            if isinstance(precision, str):
                precision = entry["Precision"] = {"result": precision}
            precision["result"] = fixed(a_bits, s["result"], saturate=True)
            for p in ("weight", "bias"):
                if p in s:
                    precision[p] = fixed(w_bits if p == "weight" else a_bits, s[p], headroom_bits=0)
            if layer in mults:
                entry["ReuseFactor"] = reuse[layer] = max(1, math.ceil(mults[layer] / MAX_MULTS_PER_CYCLE))
        _merge(config, ctx.options)
        project = ctx.out_dir / "hls_project"
        hls_model = hls4ml.converters.convert_from_pytorch_model(
            module,
            hls_config=config,
            output_dir=str(project),
            project_name=PROJECT,
            backend=fpga["backend"],
            io_type=fpga["io_type"],
            part=fpga["part"],
            clock_period=fpga["clock_period"],
        )
        hls_model.compile()  # writes the project and builds the C-simulation library with g++
        built = sorted((project / "firmware").glob(f"{PROJECT}-*.so"))
        if not built:
            raise RuntimeError("hls4ml compile() produced no C-simulation library")
        shutil.copyfile(built[-1], ctx.out_dir / "csim.so")
        synth = _synthesize(hls_model, project)
        notes = [
            f"HLS project for {fpga['backend']} HLS, part {fpga['part']}, {fpga['clock_period']} ns clock, "
            f"{fpga['io_type']}; reuse factors {reuse or 'default'}",
            "checked by hls4ml's bit-accurate C-simulation on this host (fixed-point arithmetic as synthesized); "
            "its latency column is C-simulation time on this CPU, not FPGA latency",
            synth["summary"],
        ]
        quant = (
            f"fixed point from calibration ranges: {w_bits}-bit weights, {a_bits}-bit activations "
            f"(ap_fixed, integer bits per layer)"
        )
        result = BuildResult(self.name, ctx.precision, {"model": "hls_project", "csim": "csim.so"}, notes, quant)
        write_manifest(
            ctx,
            result,
            io_by_name(ctx.inputs),
            [{"name": s.name, "shape": list(s.shape)} for s in ctx.outputs],
            project_name=PROJECT,
            layer_precision={k: v.get("Precision") for k, v in layers.items()},
            synthesis=synth,
        )
        return result

    def missing_ops(self, graph: Path, ops: dict[str, int], module=None) -> dict[str, int]:
        """PyTorch layer types of ``module`` that hls4ml has no implementation for."""
        from collections import Counter

        import hls4ml.converters

        supported = set(hls4ml.converters.get_supported_pytorch_layers())
        leaves = Counter(type(m).__name__ for m in module.modules() if not list(m.children()))
        return {k: n for k, n in leaves.items() if k not in supported and k not in ("Identity", "Dropout")}


def fuse(module):
    """Fold each BatchNorm that directly follows a convolution inside an ``nn.Sequential`` into it."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for name, child in list(module.named_children()):
        if isinstance(child, nn.Sequential):
            layers: list[nn.Module] = []
            for layer in child:
                if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layers and isinstance(layers[-1], nn.Conv2d):
                    layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
                else:
                    layers.append(fuse(layer))
            setattr(module, name, nn.Sequential(*layers))
        else:
            fuse(child)
    return module


def _is_torchscript(path: Path) -> bool:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("constants.pkl") for n in zf.namelist())


def _synthesize(hls_model, project: Path) -> dict:
    """Run HLS synthesis when Vitis/Vivado HLS is installed; otherwise say plainly that it was not."""
    tools = [t for t in ("vitis-run", "vitis_hls", "vivado_hls") if shutil.which(t)]
    if not tools:
        return {
            "ran": False,
            "summary": "not synthesized: no Vitis/Vivado HLS on PATH (vitis-run, vitis_hls); "
            "no FPGA latency or resource figures — run build_prj.tcl in the HLS project with Vitis HLS",
        }
    import hls4ml

    hls_model.build(csim=False, synth=True, export=False)
    report = hls4ml.report.parse_vivado_report(str(project)) or {}
    csynth = report.get("CSynthesisReport", {})
    return {
        "ran": True,
        "tool": tools[0],
        "report": csynth,
        "summary": f"synthesized with {tools[0]}: "
        + ", ".join(f"{k} {v}" for k, v in csynth.items() if k in ("BestLatency", "WorstLatency", "DSP", "LUT", "FF")),
    }
