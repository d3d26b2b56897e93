"""FPGA builds with hls4ml: an HLS project from the PyTorch model, plus its bit-accurate C-simulation library."""

from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(
    name="hls4ml",
    summary="hls4ml HLS project + C-simulation",
    precisions=("fp32", "fp16", "int8"),
    converter="build:Hls4mlConverter",
    libraries=("hls4ml", "torch"),
    source="pytorch",
    profiler="a C-simulation has no per-layer timing: use the HLS synthesis report, or trace=True per layer",
    layer_diff="hls4ml renames layers: use hls4ml's trace=True (per-layer outputs of the C-simulation)",
    host_only="the hls4ml C-simulation library is built for this host; FPGA builds are checked on the host",
    latency_kind="simulated",
    not_verified=(
        "the FPGA build ran as hls4ml's bit-accurate C-simulation on this host, not on an FPGA; its latency is "
        "simulation time on this CPU; FPGA latency and resources come only from HLS synthesis (see build notes)"
    ),
    color="#e377c2",
)
