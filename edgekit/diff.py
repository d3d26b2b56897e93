"""``edgekit diff``: run the original (its checked ONNX graph) and a build on the same inputs, match
intermediate tensors by name, and find the layer where the error jumps.

Each backend gives its build's intermediate tensors (``Converter.layer_tensors``): ONNX Runtime and TVM
through the ONNX graph they run or were built from (tensor names are kept by the quantizer), OpenVINO from
its runtime (IRs keep ONNX tensor names). A backend whose converter renames every tensor (TFLite:
onnx2tf) declares why not and the tool that does that check instead.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError

JUMP_DB = 6.0  # a layer whose output SNR is this much below its inputs' is where the error "jumps"…
JUMP_FLOOR_DB = 25.0  # …and ends below this (int8 noise alone keeps a healthy layer at 30–45 dB)
INPUT_SNR_DB = 40.0  # what layers fed by the model inputs are measured against (≈ an 8-bit quantized input)


def snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    """Signal-to-noise ratio of ``other`` against ``reference`` in dB (inf when identical)."""
    noise = float(np.mean((reference.astype(np.float64) - other.astype(np.float64)) ** 2))
    signal = float(np.mean(reference.astype(np.float64) ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    denom = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / denom) if denom else float(np.array_equal(a, b))


def _with_all_outputs(model):
    """The ONNX model with every typed intermediate tensor as an extra graph output."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    typed = {vi.name: vi for vi in inferred.graph.value_info}
    existing = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for name in node.output:
            if name in typed and name not in existing:
                model.graph.output.append(typed[name])
                existing.add(name)
    return model


def onnx_intermediates(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every float intermediate tensor of an ONNX graph on ``feed`` (ORT, graph optimizations off)."""
    import onnx
    import onnxruntime as ort

    model = _with_all_outputs(onnx.load(str(path)))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return {n: v for n, v in zip(names, sess.run(names, feed), strict=True) if np.issubdtype(v.dtype, np.floating)}


def _build_tensors(build_dir: Path, manifest: dict, feed: dict, wanted: set[str]) -> tuple[dict, str]:
    """The build's intermediate tensors, named as the original's, from its backend."""
    from edgekit.converters import backend_spec, get_converter

    spec = backend_spec(manifest["backend"])
    if spec.layer_diff:
        raise unsupported(manifest["backend"])
    return get_converter(spec.name).layer_tensors(build_dir, manifest, feed, wanted)


def unsupported(backend: str) -> EdgekitError:
    """Why ``diff`` cannot compare a ``backend`` build layer by layer, and what to use instead."""
    from edgekit.converters import backend_names, backend_spec

    able = [name for name in backend_names() if not backend_spec(name).layer_diff]
    return EdgekitError(
        f"diff cannot match {backend} tensors to the original's (the converter renames them)",
        f"{backend_spec(backend).layer_diff}; diff supports {'/'.join(able)}",
    )


def original_graph(original: Path) -> Path:
    """The original's checked ONNX graph: the file itself, or ``onnx/model.onnx`` of a convert output folder."""
    return original / "onnx" / "model.onnx" if original.is_dir() else original


def compare_build(original: Path, build: Path, inputs: Path, sample: int = 0) -> dict:
    """``edgekit diff``: every input checked (one-line errors), then :func:`layer_diff` on one sample."""
    from edgekit.converters import backend_spec
    from edgekit.profiling import read_build, read_inputs
    from edgekit.source import load_model

    graph = original_graph(original)
    if not graph.is_file() or graph.suffix != ".onnx":
        raise EdgekitError(
            f"need an ONNX graph and a build folder (got {graph}, {build})",
            "pass the convert output folder (or its onnx/model.onnx) and one of its build folders",
        )
    with contextlib.suppress(OSError, ValueError, AttributeError):  # a damaged manifest is named below
        backend = json.loads((build / "build.json").read_text()).get("backend")
        if isinstance(backend, str) and backend_spec(backend).layer_diff:
            raise unsupported(backend)
    load_model(str(graph))  # a damaged or foreign original is named before any work
    manifest = read_build(build)
    arrays = read_inputs(inputs, manifest["input_specs"])
    if not 0 <= sample < len(next(iter(arrays.values()))):
        raise EdgekitError(f"--inputs {inputs} has no sample {sample}", "pick an existing --sample")
    return layer_diff(graph, build, {k: v[sample : sample + 1] for k, v in arrays.items()})


def layer_diff(original: Path, build_dir: Path, feed: dict[str, np.ndarray]) -> dict:
    """Per-layer error of a build against the original's ONNX graph, in graph order, and where it jumps."""
    import onnx

    manifest = json.loads((build_dir / "build.json").read_text())
    reference = onnx_intermediates(original, feed)
    ref_model = onnx.load(str(original), load_external_data=False)
    initializers = {i.name for i in ref_model.graph.initializer}
    built, source = _build_tensors(build_dir, manifest, feed, set(reference))
    snr: dict[str, float] = {i.name: float("inf") for i in ref_model.graph.input}
    rows = []
    for node in ref_model.graph.node:
        inputs_snr = min((snr[i] for i in node.input if i in snr), default=float("inf"))
        for name in node.output:
            if name not in reference or name not in built or built[name].shape != reference[name].shape:
                if name in reference:
                    snr[name] = inputs_snr  # unmatched: carry the inputs' error forward
                continue
            value = snr_db(reference[name], built[name])
            snr[name] = value
            params = [i for i in node.input if i in initializers]
            rows.append(
                {
                    "tensor": name,
                    "node": node.name,
                    "op": node.op_type,
                    "params": params[:1],
                    "cosine": _cosine(reference[name], built[name]),
                    "max_abs": float(np.max(np.abs(reference[name] - built[name]))),
                    "snr_db": value,
                    "jump_db": min(inputs_snr, INPUT_SNR_DB) - value if np.isfinite(value) else None,
                }
            )
    first = next((r for r in rows if (r["jump_db"] or 0.0) >= JUMP_DB and r["snr_db"] < JUMP_FLOOR_DB), None)
    worst = max(rows, key=lambda r: r["jump_db"] or 0.0, default=None)
    return {
        "build": str(build_dir),
        "backend": manifest["backend"],
        "precision": manifest["precision"],
        "compared_through": source,
        "matched_layers": len(rows),
        "rows": rows,
        "first_jump": first,
        "largest_jump": worst,
        "jump_threshold_db": JUMP_DB,
        "jump_floor_db": JUMP_FLOOR_DB,
    }


def plot(diff: dict, path: Path) -> None:
    """Per-layer SNR in graph order, the divergent layer marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = diff["rows"]
    fig, ax = plt.subplots(figsize=(max(6, len(rows) * 0.25), 4))
    values = [min(r["snr_db"], 80.0) for r in rows]
    ax.plot(range(len(rows)), values, marker=".")
    worst = diff["largest_jump"]
    if worst is not None:
        i = rows.index(worst)
        ax.axvline(i, color="red", alpha=0.5)
        ax.annotate(f"{worst['node']} ({worst['op']})", (i, values[i]), color="red", fontsize=8)
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("SNR vs original, dB (capped at 80)")
    ax.set_title(f"edgekit diff: {diff['backend']} {diff['precision']}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
