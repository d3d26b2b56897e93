"""OpenVINO IR builds: ``ov.convert_model`` from ONNX; int8 through NNCF post-training quantization."""

from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(
    name="openvino",
    summary="OpenVINO IR, CPU plugin",
    precisions=("fp32", "fp16", "int8"),
    converter="build:OpenVinoConverter",
    runtime_modules=("openvino",),
    runtime_package="openvino==2026.4.1",
    libraries=("openvino", "nncf"),
    int8_choices=True,
    cannot_run={"armv7l": "OpenVINO ships no armv7 runtime"},
    color="#9467bd",
)
