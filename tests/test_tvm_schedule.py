"""Untuned TVM kernels get edgekit's default CPU schedule (parallel outer loops, vectorised inner loop)
instead of TVM's unscheduled single-threaded scalar loops, and compute the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch
import tvm
from edgekit.converters.tvm.build import compile_library, host_target
from edgekit.converters.tvm.schedule import apply_default_schedules, legalize
from tvm import relax, tirx
from tvm.relax.frontend.onnx import from_onnx


def test_default_schedule_parallelises_and_vectorises_every_convolution(cnn_case, digits, tmp_path):
    source = tmp_path / "cnn.onnx"
    torch.onnx.export(cnn_case["model"], (torch.zeros(1, 1, 8, 8),), str(source), input_names=["input"], dynamo=False)
    target = tvm.target.Target(host_target())
    mod = legalize(from_onnx(onnx.load(str(source)), keep_params_in_input=False), target)
    before = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)}
    assert not any(f.attrs and "tirx.is_scheduled" in f.attrs for f in before.values())
    scheduled = apply_default_schedules(mod, target)
    kernels = {gv.name_hint: f for gv, f in scheduled.functions_items() if isinstance(f, tirx.PrimFunc)}
    convs = {name: f.script() for name, f in kernels.items() if "conv2d" in name}
    assert convs and all(kernels[name].attrs["tirx.is_scheduled"] for name in convs)
    for name, script in convs.items():
        assert "T.parallel" in script and "T.vectorized" in script, name
        assert "T.parallel" not in before[name].script()

    lib = tmp_path / "model.so"
    compile_library(source, {"input": [1, 1, 8, 8]}, host_target(), lib, None)
    vm = relax.VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
    session = ort.InferenceSession(str(source))
    for sample in digits[0][-20:]:
        x = sample[None].astype(np.float32)
        out = vm["main"](tvm.runtime.tensor(x))
        got = (out if hasattr(out, "numpy") else out[0]).numpy()
        np.testing.assert_allclose(got, session.run(None, {"input": x})[0], rtol=1e-4, atol=1e-4)
