"""A phone over adb: ``--device adb[://SERIAL][?python=…&benchmark_model=…]``.

Outputs (the accuracy check) come from edgekit's runner under a Python on the phone (e.g. Termux with numpy
and tflite-runtime/onnxruntime); with ``benchmark_model=HOST_PATH`` a LiteRT ``benchmark_model`` binary for
Android is pushed too and its timings are recorded beside the runner's. Nothing is installed on the phone;
the work folder under /data/local/tmp is removed afterwards.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import socket
import subprocess
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from edgekit import procs
from edgekit.errors import EdgekitError
from edgekit.runners import (
    RUNNER_SCRIPT,
    RemoteRunner,
    RunnerError,
    RunResult,
    RunSpec,
    probe_script,
)

REMOTE_ROOT = "/data/local/tmp"
ADB_SERVER_PORT = 5037


def _server_running() -> bool:
    """Whether an adb server already listens (it was started by the user or another tool, not by edgekit)."""
    import os

    port = int(os.environ.get("ANDROID_ADB_SERVER_PORT", ADB_SERVER_PORT))
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def parse_devices(text: str) -> dict[str, str]:
    """``adb devices`` output → {serial: state} (device, unauthorized, offline, …)."""
    found = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            found[parts[0]] = parts[1]
    return found


def parse_benchmark_model(text: str) -> dict:
    """Timings from LiteRT ``benchmark_model``'s log (µs → ms)."""
    result: dict = {}
    m = re.search(r"Inference timings in us: (.*)", text)
    if m:
        for key, value in re.findall(r"([A-Za-z ()]+): ([\d.e+]+)", m.group(1)):
            result[key.strip().lower().replace(" ", "_").replace("(", "").replace(")", "") + "_ms"] = float(value) / 1e3
    runs = [ln for ln in text.splitlines() if re.search(r"count=\d+ .*avg=", ln)]
    if runs:  # the last statistics line is the timed run (the first one is the warm-up)
        stats = dict(re.findall(r"(\w+)=([\d.e+]+)", runs[-1]))
        result.update(
            {
                "runs": int(stats["count"]),
                **{f"{k}_ms": float(stats[k]) / 1e3 for k in ("min", "max", "avg", "std") if k in stats},
            }
        )
        if "p50" in stats:
            result["p50_ms"] = float(stats["p50"]) / 1e3
    m = re.search(r"Memory footprint delta from the start of the tool \(MB\): init=([\d.]+) overall=([\d.]+)", text)
    if m:
        result["memory_overall_mb"] = float(m.group(2))
    if "avg_ms" not in result and "inference_avg_ms" not in result:
        raise RunnerError("benchmark_model printed no timings: " + (text.strip().splitlines() or ["(no output)"])[-1])
    return result


class AdbRunner(RemoteRunner):
    """Runs builds on an Android phone attached over adb (USB or adb-over-TCP)."""

    name = "adb"
    where = "the phone"

    def __init__(self, url: str, adb: str = "adb") -> None:
        parts = urlsplit(url)
        if url != "adb" and parts.scheme != "adb":
            raise EdgekitError(f"device '{url}' is not adb[://SERIAL]", "write e.g. adb or adb://R58M12345")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.url = url
        self.serial = parts.netloc or None
        self.python = query.get("python", "/data/data/com.termux/files/usr/bin/python")
        self.benchmark_model = Path(query["benchmark_model"]) if "benchmark_model" in query else None
        self.adb = adb
        self.facts: dict = {}
        self.started_server = False  # edgekit started adb's background server: stop it in close()

    def close(self) -> None:
        """Stop the adb server if edgekit started it (adb leaves it running otherwise)."""
        if self.started_server:
            with contextlib.suppress(RunnerError):
                self._call([self.adb, "kill-server"], timeout=30)
            self.started_server = False

    def command(self, *args: str) -> list[str]:
        """The adb argv for one call, pinned to the chosen phone."""
        return [self.adb, *(["-s", self.serial] if self.serial else []), *args]

    def shell_command(
        self, remote: str, build: str, inputs: str, spec: RunSpec, runtime: str = "runtime.py"
    ) -> list[str]:
        """adb argv that runs edgekit's runner on the phone inside ``remote``."""
        argv = [self.python, RUNNER_SCRIPT.name, build, inputs, "out", *spec.args(runtime)]
        return self._shell(remote, argv, spec.timeout)

    def _shell(self, remote: str, argv: list[str], timeout: float) -> list[str]:
        command = " ".join(shlex.quote(a) for a in argv)
        return self.command("shell", f"cd {remote} && timeout -s KILL {int(timeout)} {command}")

    def benchmark_command(self, remote: str, model: str, spec: RunSpec) -> list[str]:
        """adb argv for LiteRT's benchmark_model on the pushed ``model``."""
        flags = [
            f"--graph={remote}/{model}",
            f"--num_threads={spec.threads}",
            f"--warmup_runs={spec.warmup}",
            f"--num_runs={spec.runs}",
            "--min_secs=0",
        ]
        return self.command("shell", " ".join([f"{remote}/benchmark_model", *flags]))

    def _call(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        try:
            return procs.run(argv, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RunnerError(f"adb timed out after {timeout:.0f} s: {' '.join(argv[:4])}") from exc

    def label(self) -> str:
        return f"adb {self.serial or self.facts.get('serial', '?')}"

    def describe(self) -> str:
        model = self.facts.get("model", "?")
        return f"Android phone over adb ({self.facts.get('serial', '?')}, {model}, {self.facts.get('machine', '?')})"

    def install_hint(self, package: str) -> str:
        return f"in Termux: pip install {package}"

    def prepare(self, log=lambda msg: None) -> None:
        if shutil.which(self.adb) is None:
            raise EdgekitError("adb is not installed", "apt-get install adb, or install Android platform-tools")
        self.started_server = self.started_server or not _server_running()
        proc = self._call([self.adb, "devices"], timeout=60)
        devices = parse_devices(proc.stdout)
        ready = [s for s, state in devices.items() if state == "device"]
        if self.serial and devices.get(self.serial) not in (None, "device"):
            raise EdgekitError(
                f"phone {self.serial} is {devices[self.serial]}",
                "unlock it and accept the USB-debugging prompt (adb devices must say 'device')",
            )
        if not ready or (self.serial and self.serial not in ready):
            raise EdgekitError(
                f"no Android phone attached{f' with serial {self.serial}' if self.serial else ''} (adb devices lists "
                f"{', '.join(f'{s} {st}' for s, st in devices.items()) or 'none'})",
                "connect a phone with USB debugging enabled (or adb connect HOST:PORT), or use --device emulated",
            )
        if self.serial is None and len(ready) > 1:
            raise EdgekitError(f"{len(ready)} phones attached ({', '.join(ready)})", "pick one: --device adb://SERIAL")
        self.facts["serial"] = self.serial or ready[0]
        self.serial = self.facts["serial"]
        model = self._call(self.command("shell", "getprop ro.product.model"))
        self.facts["model"] = model.stdout.strip() or "?"
        probe = self._call(self.command("shell", f"{shlex.quote(self.python)} -c {shlex.quote(probe_script())}"))
        if probe.returncode != 0 or not probe.stdout.strip():
            raise EdgekitError(
                f"phone {self.serial}: no Python at {self.python} for edgekit's runner",
                "install Termux with python, numpy and tflite-runtime/onnxruntime, or pass ?python=PATH",
            )
        self.facts.update(json.loads(probe.stdout.strip().splitlines()[-1]))
        log(f"phone {self.serial} ({self.facts['model']}) ready")

    def _adb(self, argv: list[str], what: str, timeout: float = 600) -> None:
        proc = self._call(argv, timeout=timeout)
        if proc.returncode != 0:
            raise RunnerError(f"{what} failed: {(proc.stderr or proc.stdout).strip()[-200:]}")

    def make_folder(self) -> str:
        remote = f"{REMOTE_ROOT}/edgekit-{uuid.uuid4().hex[:12]}"
        self._adb(self.command("shell", f"mkdir -p {remote}"), "adb")
        return remote

    def push(self, sources: list[Path], remote: str) -> None:
        self._adb(self.command("push", *map(str, sources), f"{remote}/"), "adb push")

    def execute(self, remote: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return self._call(self._shell(remote, argv, timeout), timeout + 30)

    def pull(self, remote: str, local: Path) -> None:
        self._adb(self.command("pull", remote, str(local)), "adb pull")

    def remove(self, remote: str) -> None:
        self._call(self.command("shell", f"rm -rf {remote}"))

    def after_run(self, remote: str, build_dir: Path, manifest: dict, spec: RunSpec, result: RunResult) -> None:
        """LiteRT's benchmark_model on the pushed .tflite, when the user gave one."""
        if self.benchmark_model is not None and manifest["backend"] == "tflite":
            result.info["benchmark_model"] = self._benchmark(remote, build_dir.name, manifest, spec)

    def _benchmark(self, remote: str, build: str, manifest: dict, spec: RunSpec) -> dict:
        proc = self._call(self.command("push", str(self.benchmark_model), f"{remote}/benchmark_model"), timeout=600)
        if proc.returncode != 0:
            raise RunnerError(f"adb push of benchmark_model failed: {proc.stderr.strip()[-200:]}")
        self._call(self.command("shell", f"chmod 755 {remote}/benchmark_model"))
        proc = self._call(self.benchmark_command(remote, f"{build}/{manifest['artifacts']['model']}", spec), 900)
        return parse_benchmark_model(proc.stdout + proc.stderr)
