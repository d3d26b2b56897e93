"""Runners execute a build's self-contained runner where the build will live and bring results back."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import runner_main
from edgekit.target import Target

RUNNER_SCRIPT = Path(runner_main.__file__)


@dataclass
class RunResult:
    """Outputs of every held-out input and the timings the runner measured."""

    outputs: list[np.ndarray]
    info: dict


class RunnerError(RuntimeError):
    """The runner could not run the build (crash, timeout, missing runtime)."""


class Runner(ABC):
    """Where builds run. ``emulated`` marks latencies that are not device latencies."""

    name: str
    emulated = False
    arch = platform.machine()

    def prepare(self, log=lambda msg: None) -> None:  # noqa: B027 — most devices need no preparation
        """Make the device ready (fail early, with a clear error, before anything is built)."""

    def repetitions(self, warmup: int, runs: int) -> tuple[int, int]:
        """Warm-up and timed runs this device affords."""
        return warmup, runs

    @abstractmethod
    def run(
        self, build_dir: Path, inputs: Path, work: Path, *, warmup: int, runs: int, threads: int, timeout: float
    ) -> RunResult:
        """Run the build in ``build_dir`` on ``inputs`` (npz) and return its outputs and timings."""

    def describe(self) -> str:
        return self.name

    def label(self) -> str:
        """Short device name for a table cell."""
        return self.name


def _collect(out_dir: Path) -> RunResult:
    with np.load(out_dir / "outputs.npz", allow_pickle=False) as npz:
        outputs = [npz[f"output_{i}"] for i in range(len(npz.files))]
    return RunResult(outputs, json.loads((out_dir / "result.json").read_text()))


def _failure(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or "").splitlines() if ln.strip()]
    if proc.returncode < 0:
        return f"runner crashed (signal {-proc.returncode}){': ' + lines[-1] if lines else ''}"
    return lines[-1][:300] if lines else f"runner exited with code {proc.returncode}"


class HostRunner(Runner):
    """Runs builds on this machine, each in a fresh Python process."""

    name = "host"

    def describe(self) -> str:
        return f"host ({platform.machine()})"

    def label(self) -> str:
        return f"host {platform.machine()}"

    def run(
        self, build_dir: Path, inputs: Path, work: Path, *, warmup: int, runs: int, threads: int, timeout: float
    ) -> RunResult:
        out = work / "run"
        cmd = [
            sys.executable,
            str(RUNNER_SCRIPT),
            str(build_dir),
            str(inputs),
            str(out),
            "--warmup",
            str(warmup),
            "--runs",
            str(runs),
            "--threads",
            str(threads),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RunnerError(f"runner timed out after {timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise RunnerError(_failure(proc))
        return _collect(out)


class EmulatedRunner(Runner):
    """Runs builds inside the emulated ARM device (qemu user mode over a real Debian userland).

    Outputs are the device's own; latencies are emulation latencies, useful only to compare builds.
    """

    name = "emulated"
    emulated = True
    MAX_RUNS, MAX_WARMUP = 10, 2

    def __init__(self, target: Target) -> None:
        from edgekit import emulator

        self.target = target
        self.image = emulator.image_for(target.arch)
        self.arch = target.arch
        self.cpu = target.cpu
        self.rootfs: Path | None = None

    def prepare(self, log=lambda msg: None) -> None:
        from edgekit import emulator

        self.rootfs = emulator.prepare(self.target.arch, log)
        emulator.write_cpu_files(self.rootfs, self.cpu, os.cpu_count() or 1)
        self.qemu = emulator.qemu_binary(self.image)
        self.qemu_version = emulator.qemu_version(self.image)

    def describe(self) -> str:
        return f"emulated {self.arch} {self.cpu} (qemu {getattr(self, 'qemu_version', '?')} user mode)"

    def label(self) -> str:
        return f"qemu {self.cpu}"

    def repetitions(self, warmup: int, runs: int) -> tuple[int, int]:
        return min(warmup, self.MAX_WARMUP), min(runs, self.MAX_RUNS)

    def run(
        self, build_dir: Path, inputs: Path, work: Path, *, warmup: int, runs: int, threads: int, timeout: float
    ) -> RunResult:
        from edgekit.emulator import SITE

        if self.rootfs is None:
            self.prepare()
        out = work / "run"
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONPATH": SITE,
            "TVM_USE_RUNTIME_LIB": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        cmd = [
            self.qemu,
            "-cpu",
            self.cpu,
            "-L",
            str(self.rootfs),
            str(self.rootfs / self.image.python),
            str(RUNNER_SCRIPT),
            str(build_dir),
            str(inputs),
            str(out),
            "--warmup",
            str(warmup),
            "--runs",
            str(runs),
            "--threads",
            str(threads),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise RunnerError(f"emulated runner timed out after {timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise RunnerError(_failure(proc))
        return _collect(out)


def get_runner(device: str, target: Target) -> Runner:
    """The runner for ``--device``: ``host`` or ``emulated``."""
    if device == "host":
        return HostRunner()
    if device == "emulated":
        return EmulatedRunner(target)
    raise EdgekitError(f"unknown device '{device}'", "use --device host or --device emulated")
