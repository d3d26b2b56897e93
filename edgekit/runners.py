"""Runners execute a build's self-contained runner where the build will live and bring results back."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit import procs
from edgekit.converters import BackendSpec, backend_spec, runtime_modules
from edgekit.errors import EdgekitError
from edgekit.runtime import runner_main
from edgekit.target import Target

RUNNER_SCRIPT = Path(runner_main.__file__)
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*|[0-9A-Fa-f:.]+")  # never an option to ssh (no leading '-')


@dataclass
class RunResult:
    """Outputs of every held-out input and the timings the runner measured."""

    outputs: list[np.ndarray]
    info: dict


@dataclass(frozen=True)
class RunSpec:
    """How to run a build: repetitions, threads, time limit, and whether to record a per-op profile."""

    warmup: int = 10
    runs: int = 50
    threads: int = 1
    timeout: float = 1800.0
    profile: bool = False

    def args(self, runtime: str) -> list[str]:
        """The runner's flags; ``runtime`` is the backend's runtime file as the device sees it."""
        flags = ["--warmup", str(self.warmup), "--runs", str(self.runs), "--threads", str(self.threads)]
        flags += ["--runtime", runtime]
        return [*flags, "--profile"] if self.profile else flags


class RunnerError(RuntimeError):
    """The runner could not run the build (crash, timeout, missing runtime)."""


class RunnerTimeout(RunnerError):
    """The build ran past its time limit on the device (and was killed there)."""


def build_backend(build_dir: Path) -> BackendSpec:
    """The capabilities of the backend that made the build in ``build_dir``."""
    return backend_spec(json.loads((build_dir / "build.json").read_text())["backend"])


class Runner(ABC):
    """Where builds run. ``name`` is the device kind; ``emulated`` marks latencies that are not device latencies."""

    name: str
    emulated = False

    @property
    def arch(self) -> str:
        """The device's CPU architecture (as ``platform.machine()`` names it there)."""
        return platform.machine()

    def prepare(self, log=lambda msg: None) -> None:  # noqa: B027 — most devices need no preparation
        """Make the device ready (fail early, with a clear error, before anything is built)."""

    def close(self) -> None:  # noqa: B027 — most devices hold nothing
        """Release what ``prepare`` started (e.g. a device server edgekit launched)."""

    @property
    def any_emulated(self) -> bool:
        """Whether any part of the device is emulated (its runs take emulation time)."""
        return self.emulated

    def repetitions(self, warmup: int, runs: int) -> tuple[int, int]:
        """Warm-up and timed runs this device affords."""
        return warmup, runs

    def cannot_run(self, backend: str) -> str | None:
        """Why this device can never run ``backend`` builds (they are built, kept, and reported skipped)."""
        return backend_spec(backend).device_limit(self.name, self.arch, platform.system())

    @abstractmethod
    def run(self, build_dir: Path, inputs: Path, work: Path, spec: RunSpec) -> RunResult:
        """Run the build in ``build_dir`` on ``inputs`` (npz) and return its outputs and timings."""

    def describe(self) -> str:
        return self.name

    def label(self) -> str:
        """Short device name for a table cell."""
        return self.name


def collect_outputs(out_dir: Path) -> RunResult:
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

    def run(self, build_dir: Path, inputs: Path, work: Path, spec: RunSpec) -> RunResult:
        out = work / "run"
        runtime = str(build_backend(build_dir).runtime_file)
        cmd = [sys.executable, str(RUNNER_SCRIPT), str(build_dir), str(inputs), str(out), *spec.args(runtime)]
        try:
            proc = procs.run(cmd, timeout=spec.timeout)
        except subprocess.TimeoutExpired as exc:
            raise RunnerTimeout(f"runner timed out after {spec.timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise RunnerError(_failure(proc))
        return collect_outputs(out)


class EmulatedRunner(Runner):
    """Runs builds inside the emulated ARM device (qemu user mode over real Debian userlands).

    Outputs are the device's own; latencies are emulation latencies, useful only to compare builds.
    An architecture may need several userlands (armv7: one per runtime); a userland that cannot be
    assembled fails only the builds that need it.
    """

    name = "emulated"
    emulated = True
    MAX_RUNS, MAX_WARMUP = 10, 2

    def __init__(self, target: Target) -> None:
        from edgekit import emulator

        self.target = target
        self.images = emulator.images_for(target.arch)
        self.cpu = target.cpu
        self.rootfs: dict[str, Path] = {}
        self.modules: dict[str, set[str]] = {}  # image → the Python modules its userland has
        self.errors: dict[str, str] = {}
        self.qemu_version = "?"

    @property
    def arch(self) -> str:
        return self.target.arch

    def prepare(self, log=lambda msg: None) -> None:
        from edgekit import emulator

        self.qemu_version = emulator.qemu_version(self.images[0])
        for image in self.images:
            try:
                root = emulator.prepare(image, log)
            except EdgekitError as exc:
                if len(self.images) == 1:
                    raise
                self.errors[image.name] = str(exc)
                log(f"emulated {image.name} userland unavailable: {exc}")
                continue
            emulator.write_cpu_files(root, self.cpu, os.cpu_count() or 1)
            self.rootfs[image.name] = root
            self.modules[image.name] = emulator.installed_modules(root)

    def describe(self) -> str:
        return f"emulated {self.arch} {self.cpu} (qemu {self.qemu_version} user mode)"

    def label(self) -> str:
        return f"qemu {self.cpu}"

    def repetitions(self, warmup: int, runs: int) -> tuple[int, int]:
        return min(warmup, self.MAX_WARMUP), min(runs, self.MAX_RUNS)

    def _image_for(self, backend: BackendSpec):
        """The userland that has the backend's runtime; None when no image has it or was assembled."""
        if not self.rootfs and not self.errors:
            self.prepare()
        wanted = set(backend.runtime_modules)
        return next((i for i in self.images if wanted & self.modules.get(i.name, set())), None)

    def cannot_run(self, backend: str) -> str | None:
        spec = backend_spec(backend)
        limit = super().cannot_run(backend)
        if limit or self.errors or self._image_for(spec) is not None:
            return limit  # a userland that failed to assemble fails (not skips) the builds that need it
        return f"the emulated {self.arch} device has no {backend} runtime ({' or '.join(spec.runtime_modules)})"

    def command(self, image, argv: list[str]) -> tuple[list[str], dict[str, str]]:
        """The command line and environment that run ``python ARGV…`` inside the userland ``image``."""
        from edgekit.emulator import SITE, qemu_binary

        root = self.rootfs[image.name]
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONPATH": SITE,
            "TVM_USE_RUNTIME_LIB": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
        return [qemu_binary(image), "-cpu", self.cpu, "-L", str(root), str(root / image.python), *argv], env

    def run(self, build_dir: Path, inputs: Path, work: Path, spec: RunSpec) -> RunResult:
        backend = build_backend(build_dir)
        image = self._image_for(backend)
        if image is None:
            broken = "; ".join(f"{name}: {error}" for name, error in self.errors.items())
            raise RunnerError(
                f"the emulated {self.arch} device has no {backend.name} runtime"
                + (f" (userland not assembled: {broken})" if broken else "")
            )
        out = work / "run"
        argv = [str(RUNNER_SCRIPT), str(build_dir), str(inputs), str(out), *spec.args(str(backend.runtime_file))]
        cmd, env = self.command(image, argv)
        try:
            proc = procs.run(cmd, timeout=spec.timeout, env=env)
        except subprocess.TimeoutExpired as exc:
            raise RunnerTimeout(f"emulated runner timed out after {spec.timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise RunnerError(_failure(proc))
        return collect_outputs(out)


def probe_script() -> str:
    """Python one-liner a device runs to say what it is and which runtimes it has."""
    modules = ["numpy", *runtime_modules()]
    return (
        "import json, platform, importlib.util as u; "
        "print(json.dumps({'machine': platform.machine(), 'python': platform.python_version(), "
        f"'have': {{m: u.find_spec(m) is not None for m in {modules!r}}}}}))"
    )


class RemoteRunner(Runner):
    """A device reached through a transport (ssh, adb): push the build, the inputs, the runner and the
    backend's runtime into a private folder there, run under a kill timer, pull the outputs, remove the folder.

    Subclasses move files and run commands; nothing is installed on the device: a missing runtime is named.
    """

    where = "the device"  # how messages name it
    python = "python3"
    facts: dict

    @property
    def arch(self) -> str:
        return self.facts.get("machine", "?")

    def install_hint(self, package: str) -> str:
        return f"on {self.where}: {self.python} -m pip install {package}"

    @abstractmethod
    def make_folder(self) -> str:
        """A new private work folder on the device."""

    @abstractmethod
    def push(self, sources: list[Path], remote: str) -> None:
        """Copy files and folders into ``remote``."""

    @abstractmethod
    def execute(self, remote: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        """Run ``argv`` in ``remote``, killed on the device after ``timeout`` seconds."""

    @abstractmethod
    def pull(self, remote: str, local: Path) -> None:
        """Copy the folder ``remote`` into the local folder ``local``."""

    @abstractmethod
    def remove(self, remote: str) -> None:
        """Remove the work folder (also after a failure)."""

    def after_run(self, remote: str, build_dir: Path, manifest: dict, spec: RunSpec, result: RunResult) -> None:
        """Extra measurements with the files still on the device (e.g. a vendor benchmark tool)."""

    def run(self, build_dir: Path, inputs: Path, work: Path, spec: RunSpec) -> RunResult:
        if not self.facts:
            self.prepare()
        manifest = json.loads((build_dir / "build.json").read_text())
        backend = backend_spec(manifest["backend"])
        if not any(self.facts["have"].get(m) for m in backend.runtime_modules):
            hint = self.install_hint(backend.runtime_package)
            raise RunnerError(f"{self.where} lacks the {backend.name} runtime; {hint}")
        remote = self.make_folder()
        try:
            self.push([build_dir, inputs, RUNNER_SCRIPT, backend.runtime_file], remote)
            argv = [self.python, RUNNER_SCRIPT.name, build_dir.name, inputs.name, "out"]
            proc = self.execute(remote, [*argv, *spec.args(backend.runtime_file.name)], spec.timeout)
            if proc.returncode == 137:
                raise RunnerTimeout(f"runner on {self.where} timed out after {spec.timeout:.0f} s (killed there)")
            if proc.returncode != 0:
                raise RunnerError(f"runner on {self.where} failed: {_failure(proc)}")
            work.mkdir(parents=True, exist_ok=True)
            self.pull(f"{remote}/out", work)
            result = collect_outputs(work / "out")
            self.after_run(remote, build_dir, manifest, spec, result)
            return result
        finally:
            self.remove(remote)


class SshRunner(RemoteRunner):
    """Runs builds on a board over SSH: key auth only, host key checked against known_hosts.

    ``ssh://user@host[:port][?key=PATH&known_hosts=PATH&python=python3]``. Artifacts, inputs and the
    self-contained runner are copied to a private folder on the board, run under ``timeout``, and the
    folder is removed afterwards. Nothing is installed on the board: a missing runtime is named.
    """

    name = "ssh"
    where = "the board"

    def __init__(self, url: str) -> None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(url)
        if parts.scheme != "ssh" or not parts.hostname:
            raise EdgekitError(f"device '{url}' is not ssh://user@host[:port]", "write e.g. ssh://pi@192.0.2.7:22")
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        self.url = url
        try:
            port = parts.port or 22
        except ValueError:
            port = 0
        self.host, self.port = parts.hostname, str(port)
        self.user = parts.username or os.environ.get("USER", "root")
        for what, value in (("user", self.user), ("host", self.host)):
            if not SAFE_NAME.fullmatch(value):
                raise EdgekitError(
                    f"device '{url}': {what} '{value}' is not a plain name or address",
                    "use letters, digits, '.', '_' and '-' (not first); IPv6 in [brackets]",
                )
        if not 0 < port < 65536:
            raise EdgekitError(f"device '{url}': invalid port", "write e.g. ssh://pi@192.0.2.7:22")
        self.python = query.get("python", "python3")
        self.options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]
        if "known_hosts" in query:
            self.options += ["-o", f"UserKnownHostsFile={query['known_hosts']}"]
        if "key" in query:
            self.options += ["-i", query["key"], "-o", "IdentitiesOnly=yes"]
        self.facts: dict = {}

    def label(self) -> str:
        return f"ssh {self.host}"

    def describe(self) -> str:
        return f"ssh board {self.user}@{self.host}:{self.port} ({self.arch}, Python {self.facts.get('python', '?')})"

    def _ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        cmd = ["ssh", "-p", self.port, *self.options, "--", f"{self.user}@{self.host}", command]
        try:
            return procs.run(cmd, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RunnerError(f"ssh command on {self.host} timed out after {timeout:.0f} s") from exc

    def _scp(self, sources: list[str], dest: str) -> None:
        cmd = ["scp", "-q", "-r", "-P", self.port, *self.options, "--", *sources, dest]
        proc = procs.run(cmd)
        if proc.returncode != 0:
            raise RunnerError(f"copy to/from {self.host} failed: {_failure(proc)}")

    def _connection_error(self, proc: subprocess.CompletedProcess) -> EdgekitError:
        text = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit code {proc.returncode}"
        if "Permission denied" in proc.stderr:
            return EdgekitError(
                f"device {self.url}: authentication failed ({text})",
                "put your public key in the board's ~/.ssh/authorized_keys, or pass ?key=PATH",
            )
        if "Host key verification failed" in proc.stderr or "host key" in proc.stderr.lower():
            return EdgekitError(
                f"device {self.url}: the board's host key is not known or changed ({text})",
                f"check its fingerprint, then: ssh-keyscan -p {self.port} {self.host} >> ~/.ssh/known_hosts",
            )
        return EdgekitError(
            f"device {self.url} is unreachable ({text})", "check the address and port, and that sshd runs on the board"
        )

    def prepare(self, log=lambda msg: None) -> None:
        import shlex

        log(f"connecting to {self.url}")
        proc = self._ssh(f"{self.python} -c {shlex.quote(probe_script())}", timeout=60)
        if proc.returncode == 255:
            raise self._connection_error(proc)
        if proc.returncode != 0:
            raise EdgekitError(
                f"device {self.url}: '{self.python}' does not run there ({_failure(proc)})",
                "install Python 3 on the board or pass ?python=/path/to/python3",
            )
        self.facts = json.loads(proc.stdout.strip().splitlines()[-1])
        if not self.facts["have"]["numpy"]:
            raise EdgekitError(
                f"device {self.url}: numpy is missing on the board", f"on the board: {self.python} -m pip install numpy"
            )

    def make_folder(self) -> str:
        proc = self._ssh("mktemp -d /tmp/edgekit.XXXXXX")
        if proc.returncode != 0:
            raise RunnerError(f"cannot create a work folder on {self.host}: {_failure(proc)}")
        return proc.stdout.strip()

    def push(self, sources: list[Path], remote: str) -> None:
        self._scp([str(p) for p in sources], f"{self.user}@{self.host}:{remote}/")

    def execute(self, remote: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        import shlex

        command = " ".join(shlex.quote(a) for a in argv)
        return self._ssh(
            f"cd {remote} && TVM_USE_RUNTIME_LIB=1 timeout --foreground -s KILL {int(timeout)} {command}",
            timeout=timeout + 30,
        )

    def pull(self, remote: str, local: Path) -> None:
        self._scp([f"{self.user}@{self.host}:{remote}"], str(local))

    def remove(self, remote: str) -> None:
        self._ssh(f"rm -rf {remote}")


def get_runner(device: str, target: Target, boards: int = 1) -> Runner:
    """The runner for ``--device``: ``host``, ``emulated``, ``ssh://user@host[:port]``, ``adb[://SERIAL]`` or
    ``rpc://TRACKER[:PORT]/KEY`` (``boards`` boards of a TVM RPC farm at once)."""
    if device.startswith("rpc://"):
        from edgekit.farm import RpcRunner

        return RpcRunner(device, target, boards)
    if boards != 1:
        raise EdgekitError(
            f"--boards {boards} needs a board farm", "pass --device rpc://TRACKER:PORT/KEY, or drop --boards"
        )
    if device == "host":
        return HostRunner()
    if device == "emulated":
        return EmulatedRunner(target)
    if device.startswith("ssh://"):
        return SshRunner(device)
    if device == "adb" or device.startswith("adb://"):
        from edgekit.adb import AdbRunner

        return AdbRunner(device)
    raise EdgekitError(
        f"unknown device '{device}'",
        "use --device host, emulated, ssh://user@host[:port], adb[://SERIAL] or rpc://TRACKER:PORT/KEY",
    )
