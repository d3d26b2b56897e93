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
from edgekit.errors import EdgekitError, first_line
from edgekit.safety import regular_file
from edgekit.tf_source import KERAS_SUFFIXES, TF_FRAMEWORKS, load_keras, load_saved_model, load_tflite, run_function

TF_SUFFIXES = {".tflite", ".keras", ".h5", ".hdf5", ".pb"}
TORCH_SUFFIXES = {".pt", ".pth", ".pt2", ".ts", ".torchscript"}
MODEL_SUFFIXES = {".onnx", *TORCH_SUFFIXES, *TF_SUFFIXES}
TRUST_FIX = (
    "only if you made this file or trust its author, pass --trust-model; otherwise ask for ONNX, or a "
    "module:callable with --weights (loaded with weights_only)"
)


@dataclass
class SourceModel:
    """The original model, as the user gave it, runnable on numpy inputs."""

    framework: str  # pytorch | torchscript | torch.export | onnx | keras | savedmodel | tflite
    location: str
    size_bytes: int
    module: Any = None  # nn.Module / ScriptModule / ExportedProgram; Keras model, SavedModel, LiteRT interpreter
    onnx_path: Path | None = None
    input_specs: list[TensorSpec] | None = None
    input_names: list[str] | None = None

    @property
    def is_torch(self) -> bool:
        return self.framework in ("pytorch", "torchscript", "torch.export")

    @property
    def is_tf(self) -> bool:
        return self.framework in TF_FRAMEWORKS

    def as_function(self):
        """A function mapping an input dict (batch of one) to a list of numpy outputs (in the source's framework)."""
        if self.is_tf:
            return run_function(self.framework, self.module, self.input_names)
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


def load_model(spec: str, weights: Path | None = None, trust: bool = False) -> SourceModel:
    """Load ``spec``: a ``.onnx``/``.pt``/``.pt2`` file, or ``module:callable`` / ``file.py:callable``.

    Formats that can run code when loaded (TorchScript; ``.pt2`` archives with pickled parts) are refused
    unless ``trust``; ``module:callable`` runs the user's own code by design.
    """
    path = Path(spec)
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return _load_tf("savedmodel", path, weights)
    if path.suffix.lower() in (*KERAS_SUFFIXES, ".tflite"):
        return _load_tf("tflite" if path.suffix.lower() == ".tflite" else "keras", path, weights)
    if path.suffix.lower() == ".pb" or (path.is_dir() and path.suffix.lower() not in MODEL_SUFFIXES):
        raise EdgekitError(
            f"model '{spec}' is not a SavedModel folder (no saved_model.pb inside)",
            "pass the SavedModel folder itself (it holds saved_model.pb and variables/), a .keras or .tflite file",
        )
    if path.suffix.lower() == ".onnx":
        return _load_onnx(path)
    if path.suffix.lower() in TORCH_SUFFIXES:
        return _load_torch_file(path, trust)
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


def _require_file(path: Path, what: str = "model file") -> None:
    regular_file(path, what)
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
            f"model '{path}' is not a valid ONNX file (corrupt or truncated: {first_line(exc)})",
            "re-export the model to ONNX",
        ) from exc
    _check_onnx_runs(path)
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


def _check_onnx_runs(path: Path) -> None:
    """ONNX Runtime must accept the graph (``onnx.checker`` passes graphs with unknown opsets or wrong types)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise EdgekitError(
            f"model '{path}' is valid ONNX but ONNX Runtime {ort.__version__} cannot load it "
            f"({first_line(exc, 400).removeprefix('[ONNXRuntimeError] : ')})",
            "re-export it with a released opset and input types every operator accepts",
        ) from exc


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise EdgekitError(
            f"model '{path}' is not a PyTorch archive (corrupt or truncated)",
            "re-save it with torch.jit.save or torch.export.save",
        ) from exc


def unsafe_export_parts(path: Path, names: list[str]) -> list[str]:
    """Parts of a ``torch.export`` archive that ``torch.export.load`` would unpickle with full pickle.

    The archive's own weight/constant configs can mark entries ``use_pickle``; constants may be pickled
    custom or opaque objects; legacy weight/constant files and sample inputs are loaded with a
    ``weights_only=False`` fallback; AOTInductor/ExecuTorch payloads are native code. Only plain
    tensors pass: every pickle it holds must load with ``weights_only=True``.
    """
    import io
    import json

    import torch

    found = []
    with zipfile.ZipFile(path) as zf:
        for name in names:
            base = name.split("/", 1)[1] if "/" in name else name
            if base.startswith(("data/aotinductor/", "data/executorch/", "data/mtia")) or name.endswith(".so"):
                found.append(f"{base} (native code)")
            elif base.endswith(("_weights_config.json", "_constants_config.json")):
                try:
                    config = json.loads(zf.read(name)).get("config", {})
                except (ValueError, AttributeError):
                    found.append(f"{base} (unreadable)")
                    continue
                for key, meta in config.items() if isinstance(config, dict) else []:
                    file = str(meta.get("path_name", "")) if isinstance(meta, dict) else ""
                    if (
                        not isinstance(meta, dict)
                        or meta.get("use_pickle")
                        or file.startswith(("custom_obj_", "opaque_obj_"))
                    ):
                        found.append(f"{key} in {base} (pickled object)")
            elif base.startswith(
                ("data/sample_inputs/", "data/weights/", "data/constants/", "extra/")
            ) and base.endswith(".pt"):
                try:
                    torch.load(io.BytesIO(zf.read(name)), weights_only=True, map_location="cpu")
                except Exception:
                    found.append(f"{base} (pickle that is not plain tensors)")
    return found


def _load_torch_file(path: Path, trust: bool) -> SourceModel:
    import torch

    _require_file(path)
    if not zipfile.is_zipfile(path):
        raise EdgekitError(
            f"model '{path}' is not a PyTorch archive (corrupt or truncated)",
            "re-save it with torch.jit.save or torch.export.save",
        )
    names = _zip_names(path)
    size = path.stat().st_size
    try:
        if any(n.endswith("constants.pkl") or "/code/__torch__" in n for n in names):
            if not trust:
                raise EdgekitError(
                    f"model '{path}' is a TorchScript archive, which runs the code it carries when loaded",
                    TRUST_FIX,
                )
            module = torch.jit.load(str(path), map_location="cpu").eval()
            names = [i.debugName().split(".")[0] for i in list(module.graph.inputs())[1:]]
            return SourceModel("torchscript", str(path), size, module=module, input_names=names)
        if any(n.endswith("/archive_format") or n.endswith("serialized_exported_program.json") for n in names):
            unsafe = [] if trust else unsafe_export_parts(path, names)
            if unsafe:
                raise EdgekitError(
                    f"model '{path}' is a torch.export archive with parts that run code when loaded: "
                    f"{', '.join(unsafe[:3])}{' …' if len(unsafe) > 3 else ''}",
                    TRUST_FIX,
                )
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
    except EdgekitError:
        raise
    except Exception as exc:
        raise EdgekitError(
            f"model '{path}' cannot be loaded by PyTorch ({first_line(exc)})",
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
    if not target or not attr.isidentifier():
        raise EdgekitError(f"model '{spec}' is not module:callable", "write e.g. mypkg.models:build_net")
    try:
        if target.endswith(".py"):
            file = regular_file(Path(target), f"model '{spec}': file")
            mod_spec = importlib.util.spec_from_file_location(file.stem, file)
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(target)
    except EdgekitError:
        raise
    except (Exception, SystemExit) as exc:  # the user's module: syntax errors, failing imports, sys.exit at import
        raise EdgekitError(
            f"model '{spec}': importing '{target}' failed ({type(exc).__name__}: {first_line(exc)})",
            "fix the module (run `python -c 'import …'` to see the traceback), or run from the folder that holds it",
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
    except (Exception, SystemExit) as exc:
        raise EdgekitError(
            f"model '{spec}': calling it failed ({type(exc).__name__}: {first_line(exc)})",
            "make the callable return an nn.Module without arguments",
        ) from exc
    if not isinstance(module, torch.nn.Module):
        raise EdgekitError(
            f"model '{spec}' returned {type(module).__name__}, not a torch.nn.Module",
            "make the callable return an nn.Module",
        )
    if weights is not None:
        _load_weights(module, spec, Path(weights))
    module.eval()
    size = (
        Path(weights).stat().st_size
        if weights
        else sum(p.numel() * p.element_size() for p in module.state_dict().values())
    )
    names = [p for p in inspect.signature(module.forward).parameters if p not in ("self",)]
    return SourceModel("pytorch", spec, size, module=module, input_names=names)


def _load_weights(module, spec: str, weights: Path) -> None:
    """Load a state dict (``weights_only``) into ``module``, naming missing, unexpected and mis-shaped keys."""
    import torch

    _require_file(weights, "--weights")
    fix = "pass the state dict saved from this architecture (torch.save(model.state_dict(), path))"
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise EdgekitError(f"weights '{weights}' cannot be read as a state dict ({first_line(exc)})", fix) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise EdgekitError(f"weights '{weights}' hold a {type(state).__name__}, not a state dict of tensors", fix)
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)}≠{tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]

    def some(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")

    problems = [
        f"{what}: {some(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes))
        if keys
    ]
    if problems:
        raise EdgekitError(f"weights '{weights}' do not load into {spec} ({'; '.join(problems)})", fix)
    try:
        module.load_state_dict(state)
    except Exception as exc:
        raise EdgekitError(f"weights '{weights}' do not load into {spec} ({first_line(exc)})", fix) from exc


def _load_tf(framework: str, path: Path, weights: Path | None) -> SourceModel:
    """A Keras model, SavedModel signature or ``.tflite`` interpreter as the original."""
    if weights is not None:
        raise EdgekitError(f"--weights is not used with a {framework} model", "drop --weights")
    if framework == "savedmodel":
        handle, specs = load_saved_model(path)
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        _require_file(path)
        handle, specs = (load_keras if framework == "keras" else load_tflite)(path)
        size = path.stat().st_size
    return SourceModel(
        framework, str(path), size, module=handle, input_specs=specs, input_names=[s.name for s in specs]
    )
