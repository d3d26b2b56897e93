"""Fuzzing (hypothesis, bounded): the model loaders, the data loaders and the target-file parser end in success
or in edgekit's own one-line error — never in another exception."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgekit.data import TensorSpec, load_dataset
from edgekit.errors import EdgekitError
from edgekit.models.small_cnn import SmallCNN
from edgekit.source import load_model
from edgekit.target import load_target

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> dict[str, bytes]:
    """Valid files to mutate: an ONNX graph, a torch.export archive and a calibration .npz."""
    root = tmp_path_factory.mktemp("seeds")
    model = SmallCNN().eval()
    x = torch.zeros(1, 1, 8, 8)
    torch.onnx.export(model, (x,), str(root / "m.onnx"), input_names=["input"], dynamo=False)
    torch.export.save(torch.export.export(model, (x,)), str(root / "m.pt2"))
    buffer = io.BytesIO()
    np.savez(buffer, input=np.random.default_rng(0).random((4, 1, 8, 8), dtype=np.float32), labels=np.arange(4))
    return {".onnx": (root / "m.onnx").read_bytes(), ".pt2": (root / "m.pt2").read_bytes(), ".npz": buffer.getvalue()}


def _mutate(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    buf = bytearray(data)
    for pos, value in edits:
        buf[pos % len(buf)] = value
    return bytes(buf[:cut] if cut else buf)


def _expect_edgekit_error_or_success(fn) -> None:
    try:
        fn()
    except EdgekitError as exc:
        assert str(exc).strip() and "\n" not in exc.problem


EDITS = st.lists(st.tuples(st.integers(0, 1 << 30), st.integers(0, 255)), max_size=8)
CUT = st.one_of(st.none(), st.integers(1, 1 << 20))


@FUZZ
@given(suffix=st.sampled_from([".onnx", ".pt2", ".pt"]), edits=EDITS, cut=CUT)
def test_model_loaders_on_damaged_models(seeds, suffix, edits, cut):
    data = _mutate(seeds[".pt2" if suffix == ".pt" else suffix], edits, cut)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"model{suffix}"
        path.write_bytes(data)
        _expect_edgekit_error_or_success(lambda: load_model(str(path)))


@FUZZ
@given(suffix=st.sampled_from([".onnx", ".pt", ".pt2", ".ts", ".npz", ".npy"]), data=st.binary(max_size=2048))
def test_loaders_on_random_bytes(suffix, data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{suffix}"
        path.write_bytes(data)
        if suffix in (".npz", ".npy"):
            _expect_edgekit_error_or_success(lambda: load_dataset(path, None))
        else:
            _expect_edgekit_error_or_success(lambda: load_model(str(path)))


@FUZZ
@given(edits=EDITS, cut=CUT, with_specs=st.booleans())
def test_data_loader_on_damaged_npz(seeds, edits, cut, with_specs):
    specs = [TensorSpec("input", (1, 1, 8, 8), "float32")] if with_specs else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calib.npz"
        path.write_bytes(_mutate(seeds[".npz"], edits, cut))
        _expect_edgekit_error_or_success(lambda: load_dataset(path, specs))


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64]),
    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4),
)


@FUZZ
@given(
    arrays=st.dictionaries(st.sampled_from(["input", "x", "labels", "y", ""]), ARRAYS, min_size=0, max_size=3),
    with_specs=st.booleans(),
)
def test_data_loader_on_arbitrary_arrays(arrays, with_specs):
    specs = [TensorSpec("input", (1, 1, 4, 4), "float32")] if with_specs else None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data.npz"
        np.savez(path, **{k or "arr_0": v for k, v in arrays.items()})
        _expect_edgekit_error_or_success(lambda: load_dataset(path, specs))


TOML_VALUES = st.one_of(
    st.text(max_size=12).map(lambda s: '"' + s.replace("\\", "").replace('"', "").replace("\n", "") + '"'),
    st.integers(-5, 5).map(str),
    st.booleans().map(lambda b: str(b).lower()),
    st.lists(st.sampled_from(['"tflite"', '"onnxruntime"', '"tvm"', '"x"', "1", '"int8"', '"fp32"']), max_size=4).map(
        lambda v: "[" + ", ".join(v) + "]"
    ),
)
TOML_KEYS = st.sampled_from(
    ["name", "triple", "arch", "cpu", "mattr", "backends", "default_precision", "runner", "platform", "cross_compiler"]
)


@FUZZ
@given(table=st.dictionaries(TOML_KEYS, TOML_VALUES, max_size=10), raw=st.text(max_size=200))
def test_target_parser(table, raw):
    with tempfile.TemporaryDirectory() as tmp:
        for text in ("\n".join(f"{k} = {v}" for k, v in table.items()), raw):
            path = Path(tmp) / "board.toml"
            path.write_text(text)
            _expect_edgekit_error_or_success(lambda p=path: load_target(str(p)))
