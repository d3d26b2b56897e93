"""TensorFlow sources: Keras (``.keras``, legacy ``.h5``), SavedModel folders and ``.tflite`` flatbuffers.

The original runs in its own framework (Keras / TF / the LiteRT interpreter) and is exported to ONNX with
tf2onnx (``from_function`` for Keras and SavedModel signatures, ``from_tflite`` for flatbuffers).
Layouts are kept as the source has them (channels-last for image models).
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from edgekit.data import TensorSpec
from edgekit.errors import EdgekitError, first_line

TF_FRAMEWORKS = ("keras", "savedmodel", "tflite")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SIGNATURE = "serving_default"


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _spec(name: str, shape, dtype) -> TensorSpec:
    dims = tuple(-1 if d is None or int(d) < 0 else int(d) for d in shape)
    return TensorSpec(name, dims, np.dtype(dtype).name)


def load_keras(path: Path):
    """A Keras model loaded with ``safe_mode`` (Lambda layers carrying Python code are refused)."""
    _quiet_tf()
    import keras

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            model = keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        text = first_line(exc)
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise EdgekitError(
                f"model '{path}' holds Python code (a Lambda layer) that Keras runs only outside safe mode",
                "rebuild the model without Lambda layers, or export it to ONNX yourself if you trust it",
            ) from exc
        raise EdgekitError(f"model '{path}' cannot be loaded by Keras ({text})", "re-save it with model.save") from exc
    specs = [_spec(t.name.split(":")[0], t.shape, t.dtype) for t in model.inputs]
    return model, specs


def load_saved_model(path: Path):
    """The ``serving_default`` signature of a SavedModel folder and its input specs (keyword names, sorted)."""
    tf = _quiet_tf()
    try:
        loaded = tf.saved_model.load(str(path))
        signature = loaded.signatures[SIGNATURE]
    except KeyError as exc:
        raise EdgekitError(
            f"SavedModel '{path}' has no '{SIGNATURE}' signature",
            "export it with model.export(path) or tf.saved_model.save(obj, path, signatures=…)",
        ) from exc
    except Exception as exc:
        raise EdgekitError(
            f"'{path}' cannot be loaded as a SavedModel ({first_line(exc)})", "re-export it with tf.saved_model.save"
        ) from exc
    _, kwargs = signature.structured_input_signature
    specs = [_spec(name, kwargs[name].shape, kwargs[name].dtype.as_numpy_dtype) for name in sorted(kwargs)]
    return (loaded, signature), specs


def _interpreter(path: Path, threads: int | None = None):
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    return interp


def load_tflite(path: Path):
    """A LiteRT interpreter over the flatbuffer, its input specs, and whether it is already quantized."""
    try:
        interp = _interpreter(path)
    except Exception as exc:
        raise EdgekitError(
            f"model '{path}' is not a TFLite flatbuffer LiteRT can load ({first_line(exc)})",
            "re-convert it with TFLiteConverter",
        ) from exc
    specs = [_spec(d["name"], d.get("shape_signature", d["shape"]), d["dtype"]) for d in interp.get_input_details()]
    return interp, specs


def tflite_is_quantized(path: Path) -> bool:
    """Whether the flatbuffer computes in int8 (any int8/uint8 tensor with quantization parameters)."""
    interp = _interpreter(path)
    return any(
        d["dtype"] in (np.int8, np.uint8) and len(d["quantization_parameters"]["scales"])
        for d in interp.get_tensor_details()
    )


def run_function(framework: str, handle, input_names: list[str]):
    """A function mapping an input dict (batch of one) to the original's outputs, in its own framework."""
    if framework == "keras":
        model = handle

        def run_keras(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            args = [feed[n] for n in input_names]
            out = model(args[0] if len(args) == 1 else args, training=False)
            outs = out if isinstance(out, (list, tuple)) else [out]
            return [np.asarray(o) for o in outs]

        return run_keras
    if framework == "savedmodel":
        _, signature = handle

        def run_signature(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            out = signature(**{n: feed[n] for n in input_names})
            return [np.asarray(out[k]) for k in sorted(out)]

        return run_signature
    interp = handle
    details = {d["name"]: d for d in interp.get_input_details()}
    outputs = interp.get_output_details()

    def run_tflite(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        for name in input_names:
            value = feed[name]
            if tuple(details[name]["shape"]) != value.shape:
                interp.resize_tensor_input(details[name]["index"], value.shape)
                interp.allocate_tensors()
            interp.set_tensor(details[name]["index"], value)
        interp.invoke()
        return [interp.get_tensor(d["index"]).copy() for d in outputs]

    return run_tflite


def to_onnx(framework: str, handle, location: str, specs: list[TensorSpec], opset: int):
    """The source as an ONNX ModelProto (tf2onnx) with the static input shapes of ``specs``."""
    tf = _quiet_tf()
    import tf2onnx

    signature = [tf.TensorSpec(s.shape, tf.dtypes.as_dtype(s.dtype), name=s.name) for s in specs]
    names = [s.name for s in specs]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if framework == "tflite":
            model, _ = tf2onnx.convert.from_tflite(location, opset=opset)
        elif framework == "keras":
            keras_model = handle

            def call_keras(*args):
                out = keras_model(args[0] if len(args) == 1 else list(args), training=False)
                return list(out) if isinstance(out, (list, tuple)) else [out]

            model, _ = tf2onnx.convert.from_function(
                tf.function(call_keras, input_signature=signature), input_signature=signature, opset=opset
            )
        else:
            _, sig = handle
            keys = sorted(sig.structured_outputs)

            def call_signature(*args):
                out = sig(**dict(zip(names, args, strict=True)))
                return [out[k] for k in keys]

            model, _ = tf2onnx.convert.from_function(
                tf.function(call_signature, input_signature=signature), input_signature=signature, opset=opset
            )
    return model
