"""Untuned TVM kernels get edgekit's default CPU schedule (parallel outer loops, vectorised inner loop)
instead of TVM's unscheduled single-threaded scalar loops, and compute the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
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


@pytest.mark.slow  # about 30 s: MetaSchedule design spaces (keeps the default suite under 15 min)
def test_relu6_is_fused_into_nhwc_convolutions_and_every_kernel_has_a_tuning_space(tmp_path):
    """ReLU6 is ONNX Clip with its bounds as inputs. The frontend NaN-checks the bounds (folded when lowering,
    or MetaSchedule cannot tile the convolution kernels) and clips with opaque TIR calls (rewritten as Relax
    ops, or the NHWC layout wraps each in transposes and keeps it out of its convolution)."""
    from edgekit.converters.tvm.tune import _cpu_tensor_intrinsics
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks, extracted_tasks_to_tune_contexts

    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6(), torch.nn.Conv2d(8, 4, 1), torch.nn.ReLU6()
    ).eval()
    source = tmp_path / "relu6.onnx"
    x = torch.rand(1, 3, 16, 16) * 4 - 2
    torch.onnx.export(model, (x,), str(source), input_names=["x"], opset_version=13, dynamo=False)
    assert [n.op_type for n in onnx.load(str(source)).graph.node].count("Clip") == 2
    target = tvm.target.Target({**host_target(), "num-cores": 2})
    mod = legalize(from_onnx(onnx.load(str(source)), keep_params_in_input=False), target)
    assert "isnan" not in mod.script(show_meta=False)
    kernels = [gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tirx.PrimFunc)]
    convs = [k for k in kernels if "conv2d" in k]
    assert len(convs) == 2 and all("maximum" in k and "minimum" in k for k in convs), kernels
    assert sorted(kernels) == sorted([*convs, "transpose", "transpose1"]), kernels  # NHWC inside: 2 transposes
    tasks = [t for t in extract_tasks(mod, target) if "conv2d" in t.task_name]
    _cpu_tensor_intrinsics()
    contexts, _ = extracted_tasks_to_tune_contexts(tasks, str(tmp_path / "logs"))
    assert all(context.generate_design_space() for context in contexts)

    vm = relax.VirtualMachine(tvm.compile(apply_default_schedules(mod, target), target=target), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
