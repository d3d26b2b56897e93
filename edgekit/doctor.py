"""``edgekit doctor``: which optional parts of the toolchain are here, and the command that adds each."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass


@dataclass(frozen=True)
class Check:
    name: str
    needed_for: str
    present: bool
    detail: str
    fix: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "needed_for": self.needed_for,
            "present": self.present,
            "detail": self.detail,
            "fix": self.fix,
        }


def _tool(name: str, needed_for: str, fix: str) -> Check:
    path = shutil.which(name)
    return Check(name, needed_for, path is not None, path or "not on PATH", fix)


def _module(name: str, needed_for: str, fix: str) -> Check:
    spec = importlib.util.find_spec(name)
    return Check(name, needed_for, spec is not None, "importable" if spec else "not installed", fix)


def _emulated(arch: str) -> Check:
    from edgekit import emulator

    images = emulator.images_for(arch)
    ready = [
        i.name for i in images if (emulator.cache_root() / f"rootfs-{i.name}-{i.key()}" / emulator.COMPLETE).exists()
    ]
    missing = [i.name for i in images if i.name not in ready]
    detail = f"ready: {', '.join(ready) or 'none'}" + (f"; missing: {', '.join(missing)}" if missing else "")
    target = "arm64" if arch == "aarch64" else "armv7"
    return Check(
        f"emulated {target} device",
        f"--device emulated for {target} targets",
        not missing,
        detail,
        f"edgekit device prepare --target {target}",
    )


def checks() -> list[Check]:
    """Every optional part, checked without starting anything."""
    apt = "apt-get install -y"
    return [
        _tool("qemu-aarch64-static", "the emulated arm64 device", f"{apt} qemu-user-static"),
        _tool("qemu-arm-static", "the emulated armv7 device", f"{apt} qemu-user-static"),
        _emulated("aarch64"),
        _emulated("armv7l"),
        _tool("aarch64-linux-gnu-g++", "TVM arm64 shared libraries", f"{apt} g++-aarch64-linux-gnu"),
        _tool("arm-linux-gnueabihf-g++", "TVM armv7 shared libraries", f"{apt} g++-arm-linux-gnueabihf"),
        _tool("g++", "hls4ml C-simulation (FPGA target)", f"{apt} g++"),
        _tool("ssh", "--device ssh://… boards", f"{apt} openssh-client"),
        _tool("adb", "--device adb (Android phones)", f"{apt} adb"),
        _tool("vitis-run", "FPGA synthesis (latency/resources) for the fpga target", "install AMD Vitis HLS"),
        _module("tf2onnx", "TensorFlow sources (Keras, SavedModel, .tflite)", "pip install tf2onnx==1.17.0"),
        _module("coremltools", "the ios-arm64 target (Core ML)", "pip install coremltools==9.0"),
        _module("hls4ml", "the fpga target (hls4ml)", "pip install hls4ml==1.3.0"),
        _module("torch_pruning", "--prune structured", "pip install torch-pruning==1.6.1"),
        _module("tornado", "edgekit farm up / a TVM RPC tracker", "pip install tornado==6.6.1"),
        _module("xgboost", "TVM --tune (MetaSchedule's cost model)", "pip install xgboost-cpu==3.2.0"),
    ]
