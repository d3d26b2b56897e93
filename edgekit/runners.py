"""Runners execute a build's self-contained runner where the build will live and bring results back."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import EdgekitError
from edgekit.runtime import runner_main

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

    @abstractmethod
    def run(
        self, build_dir: Path, inputs: Path, work: Path, *, warmup: int, runs: int, threads: int, timeout: float
    ) -> RunResult:
        """Run the build in ``build_dir`` on ``inputs`` (npz) and return its outputs and timings."""

    def describe(self) -> str:
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


def get_runner(device: str) -> Runner:
    """The runner for ``--device`` (``host``)."""
    if device == "host":
        return HostRunner()
    raise EdgekitError(f"unknown device '{device}'", "use --device host")
