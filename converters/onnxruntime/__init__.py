"""ONNX Runtime builds: fp32/fp16 ONNX, or edgekit's shared int8 graph (static QDQ or dynamic); ORT format."""

from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(
    name="onnxruntime",
    summary="ONNX Runtime, CPU execution provider",
    precisions=("fp32", "fp16", "int8"),
    converter="build:OnnxRuntimeConverter",
    runtime_modules=("onnxruntime",),
    runtime_package="onnxruntime==1.31.1",
    libraries=("onnx", "onnxruntime"),
    int8_graph=True,
    color="#2ca02c",
)
