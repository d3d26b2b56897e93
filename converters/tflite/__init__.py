"""LiteRT (TFLite) builds: onnx2tf from ONNX, or TFLite's own converter for TensorFlow sources."""

from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(
    name="tflite",
    summary="LiteRT (TFLite) flatbuffer",
    precisions=("fp32", "fp16", "int8"),
    converter="build:TfliteConverter",
    runtime_modules=("ai_edge_litert", "tflite_runtime"),
    runtime_package="ai-edge-litert==2.3.0",
    libraries=("onnx2tf", "tensorflow", "tf2onnx", "ai-edge-litert"),
    tf_native=True,
    int8_biases=True,
    profiler="the LiteRT Python interpreter has no op profiler: use benchmark_model --enable_op_profiling=true",
    layer_diff="for TFLite run onnx2tf with -cotof (its per-op ONNX-vs-TF check)",
    color="#1f77b4",
)
