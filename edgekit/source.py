"""Loading the user's trained model: PyTorch (module:callable, TorchScript, torch.export) or ONNX."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.data import TensorSpec
from edgekit.errors import EdgekitError

TF_SUFFIXES = {".tflite", ".keras", ".h5", ".pb"}


@dataclass
class SourceModel:
    """The original model, as the user gave it, runnable on numpy inputs."""

    framework: str  # pytorch | torchscript | torch.export | onnx
    location: str
    size_bytes: int
    module: Any = None  # nn.Module / ScriptModule / ExportedProgram for PyTorch sources
    onnx_path: Path | None = None
    input_specs: list[TensorSpec] | None = None
    input_names: list[str] | None = None

    @property
    def is_torch(self) -> bool:
        return self.framework != "onnx"

    def as_function(self):
        """A function mapping an input dict (batch of one) to a list of numpy outputs."""
        if self.is_torch:
            import torch

            fn = self.module.module() if self.framework == "torch.export" else self.module
            names = self.input_names

            def run(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
                with torch.inference_mode():
                    out = fn(*[torch.from_numpy(feed[n]) for n in names])
                outs = out if isinstance(out, (tuple, list)) else [out]
                return [o.detach().numpy() for o in outs]

            return run
        import onnxruntime as ort

        sess = ort.InferenceSession(str(self.onnx_path), providers=["CPUExecutionProvider"])
        return lambda feed: sess.run(None, feed)


def load_model(spec: str, weights: Path | None = None) -> SourceModel:
    """Load ``spec``: a ``.onnx``/``.pt``/``.pt2`` file, or ``module:callable`` / ``file.py:callable``."""
    path = Path(spec)
    if path.suffix.lower() in TF_SUFFIXES or (path.is_dir() and (path / "saved_model.pb").exists()):
        raise EdgekitError(
            f"model '{spec}': TensorFlow/Keras/TFLite sources are not supported by this version",
            "export the model to ONNX (tf2onnx) and pass the .onnx file",
        )
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    if path.suffix.lower() in {".pt", ".pth", ".pt2", ".ts", ".torchscript"}:
        return _load_torch_file(path)
    if ":" in spec:
        return _load_callable(spec, weights)
    if not path.exists():
        raise EdgekitError(
            f"model '{spec}' does not exist",
            "pass a .onnx/.pt/.pt2 file or an importable module:callable returning an nn.Module",
        )
    raise EdgekitError(
        f"model '{spec}': unknown format", "use .onnx, TorchScript .pt, torch.export .pt2, or module:callable"
    )


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise EdgekitError(f"model file '{path}' does not exist", "check the path")
    if path.stat().st_size == 0:
        raise EdgekitError(f"model file '{path}' is empty", "re-export the model")


def _load_onnx(path: Path) -> SourceModel:
    import onnx

    _require_file(path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:  # protobuf/onnx raise many types for a damaged file
        raise EdgekitError(
            f"model '{path}' is not a valid ONNX file (corrupt or truncated: {str(exc).splitlines()[0][:120]})",
            "re-export the model to ONNX",
        ) from exc
    init = {i.name for i in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in init:
            continue
        t = value.type.tensor_type
        dims = tuple(d.dim_value if d.dim_value > 0 else -1 for d in t.shape.dim)
        specs.append(TensorSpec(value.name, dims, onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name))
    return SourceModel(
        "onnx", str(path), path.stat().st_size, onnx_path=path, input_specs=specs, input_names=[s.name for s in specs]
    )


def _load_torch_file(path: Path) -> SourceModel:
    import torch

    _require_file(path)
    if not zipfile.is_zipfile(path):
        raise EdgekitError(
            f"model '{path}' is not a PyTorch archive (corrupt or truncated)",
            "re-save it with torch.jit.save or torch.export.save",
        )
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    size = path.stat().st_size
    try:
        if any(n.endswith("constants.pkl") or "/code/__torch__" in n for n in names):
            module = torch.jit.load(str(path), map_location="cpu").eval()
            names = [i.debugName().split(".")[0] for i in list(module.graph.inputs())[1:]]
            return SourceModel("torchscript", str(path), size, module=module, input_names=names)
        if any(n.endswith("/archive_format") or n.endswith("serialized_exported_program.json") for n in names):
            program = torch.export.load(str(path))
            specs = [
                TensorSpec(n, tuple(int(d) for d in t.shape), str(t.dtype).removeprefix("torch."))
                for n, t in zip(_ep_input_names(program), program.example_inputs[0], strict=False)
            ]
            return SourceModel(
                "torch.export",
                str(path),
                size,
                module=program,
                input_specs=specs or None,
                input_names=[s.name for s in specs] or None,
            )
    except Exception as exc:
        raise EdgekitError(
            f"model '{path}' cannot be loaded by PyTorch ({str(exc).splitlines()[0][:120]})",
            "re-save it with torch.jit.save or torch.export.save",
        ) from exc
    raise EdgekitError(
        f"model '{path}' is a pickled module or state dict, not a TorchScript/torch.export archive",
        "pass the architecture as module:callable and this file with --weights",
    )


def _ep_input_names(program) -> list[str]:
    from torch.export.graph_signature import InputKind

    return [s.arg.name for s in program.graph_signature.input_specs if s.kind == InputKind.USER_INPUT]


def _import_callable(spec: str):
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py"):
        file = Path(target)
        if not file.is_file():
            raise EdgekitError(f"model '{spec}': file '{target}' does not exist", "check the path")
        mod_spec = importlib.util.spec_from_file_location(file.stem, file)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise EdgekitError(
                f"model '{spec}': cannot import module '{target}' ({exc})",
                "run from the folder that holds it or install it",
            ) from exc
    fn = getattr(module, attr, None)
    if fn is None:
        raise EdgekitError(f"model '{spec}': '{target}' has no attribute '{attr}'", "check the callable's name")
    return fn


def _load_callable(spec: str, weights: Path | None) -> SourceModel:
    import torch

    fn = _import_callable(spec)
    try:
        module = fn() if callable(fn) and not isinstance(fn, torch.nn.Module) else fn
    except Exception as exc:
        raise EdgekitError(
            f"model '{spec}': calling it failed ({exc})", "make the callable return an nn.Module"
        ) from exc
    if not isinstance(module, torch.nn.Module):
        raise EdgekitError(
            f"model '{spec}' returned {type(module).__name__}, not a torch.nn.Module",
            "make the callable return an nn.Module",
        )
    if weights is not None:
        _require_file(Path(weights))
        try:
            state = torch.load(str(weights), map_location="cpu", weights_only=True)
            module.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
        except Exception as exc:
            raise EdgekitError(
                f"weights '{weights}' do not load into {spec} ({str(exc).splitlines()[0][:160]})",
                "pass the state dict saved from this architecture",
            ) from exc
    module.eval()
    size = (
        Path(weights).stat().st_size
        if weights
        else sum(p.numel() * p.element_size() for p in module.state_dict().values())
    )
    names = [p for p in inspect.signature(module.forward).parameters if p not in ("self",)]
    return SourceModel("pytorch", spec, size, module=module, input_names=names)
