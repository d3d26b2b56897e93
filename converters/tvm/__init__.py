"""Apache TVM builds: Relax ONNX frontend → ``tvm.compile`` for the target triple → shared library."""

from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(
    name="tvm",
    summary="Apache TVM (Relax), compiled shared library",
    precisions=("fp32", "int8"),
    converter="build:TvmConverter",
    runtime_modules=("tvm",),
    runtime_package="apache-tvm==0.27.0.post1",
    libraries=("apache-tvm", "apache-tvm-ffi"),
    int8_graph=True,
    int8_modes=("dynamic",),
    int8_not_offered=(
        "TVM 0.27's Relax ONNX frontend lowers static (QDQ) int8 graphs to float kernels between quantize and "
        "dequantize (0 integer compute layers); dynamic int8 MatMul graphs are lowered to integer matmuls"
    ),
    profiler="the TVM runtime VM of an exported library has no per-op profiler; build with relax profiling instruments",
    cannot_run={
        "adb": "the TVM build's phone library needs an NDK link and TVM's Android runtime (not run by edgekit)",
        "armv7l": "no TVM runtime for armv7l exists in the registries (no armv7l apache-tvm wheel or Debian package)",
    },
    color="#d62728",
)
