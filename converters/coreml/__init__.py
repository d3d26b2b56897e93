"""Core ML builds (iOS/macOS): an ML program ``.mlpackage`` converted by coremltools from the PyTorch model."""

from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(
    name="coreml",
    summary="Core ML ML program (coremltools)",
    precisions=("fp32", "fp16", "int8"),
    converter="build:CoreMlConverter",
    runtime_modules=("coremltools",),
    runtime_package="coremltools==9.0",
    libraries=("coremltools", "torch"),
    source="pytorch",
    profiler="Core ML's per-op profile needs Xcode's Core ML performance report (macOS)",
    layer_diff="Core ML runs only on macOS/iOS: compare intermediate outputs with coremltools there",
    host_only="Core ML runs only on macOS/iOS (built here; its program inspected, not run)",
    host_system="Darwin",
    not_verified=(
        "Core ML builds were converted and inspected (program, I/O, weight types) but not run: Core ML runs only "
        "on macOS/iOS; run edgekit on a Mac to check them"
    ),
    color="#8c564b",
)
