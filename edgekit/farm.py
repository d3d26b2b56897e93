"""A board farm through TVM's RPC tracker: ``--device rpc://TRACKER:PORT/KEY [--boards N]`` and ``edgekit farm``.

Boards run ``edgekit/runtime/board_server.py`` (a TVM RPC server with edgekit's runner functions) and
register with a tracker under a key that names their device class. A build is fanned out over N free
boards at once; each board gets the build, the held-out inputs, the runner and the backend's runtime in
a private session folder (removed by TVM when the session ends), runs it under a kill timer and sends
back its outputs and timings. The results are merged: per-board rows, the median p50 and the spread
across boards, outliers flagged, and a board that fails or disappears mid-run is a row with its error
while the others still report.
"""

from __future__ import annotations

import io
import json
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from edgekit import procs
from edgekit.converters import runtime_modules
from edgekit.errors import EdgekitError, one_line
from edgekit.metrics import latency_stats
from edgekit.runners import SAFE_NAME, RemoteRunner, Runner, RunnerError, RunnerTimeout, RunResult, RunSpec
from edgekit.runtime import board_server
from edgekit.target import Target

BOARD_SCRIPT = Path(board_server.__file__)
DEFAULT_PORT = 9190
OUTLIER_RATIO = 1.5  # a board whose p50 is this far from the farm's median (either way) is flagged
SESSION_SLACK_S = 120.0  # a session outlives its runner's time limit by this much (upload, unpack, results)
URL_HELP = "write rpc://TRACKER_HOST[:PORT]/KEY, e.g. rpc://10.0.0.5:9190/rpi5"


@dataclass(frozen=True)
class FarmAddress:
    """Where the tracker is and which device class (key) to request."""

    host: str
    port: int
    key: str

    @classmethod
    def parse(cls, url: str) -> FarmAddress:
        parts = urlsplit(url)
        key = parts.path.strip("/")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError:
            port = 0
        if parts.scheme != "rpc" or not parts.hostname or not key:
            raise EdgekitError(f"device '{url}' is not rpc://TRACKER[:PORT]/KEY", URL_HELP)
        if not 0 < port < 65536:
            raise EdgekitError(f"device '{url}': invalid tracker port", URL_HELP)
        for what, value in (("tracker host", parts.hostname), ("key", key)):
            if not SAFE_NAME.fullmatch(value):
                raise EdgekitError(f"device '{url}': {what} '{value}' is not a plain name", URL_HELP)
        return cls(parts.hostname, port, key)

    @property
    def url(self) -> str:
        return f"rpc://{self.host}:{self.port}/{self.key}"


def tracker_summary(host: str, port: int, timeout: float = 5.0) -> dict:
    """The tracker's summary (its boards and queues); a one-line error when nothing answers there."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise EdgekitError(
            f"no RPC tracker answers at {host}:{port} ({exc.strerror or exc})",
            "start one with 'edgekit farm up', or check TRACKER:PORT in rpc://TRACKER:PORT/KEY",
        ) from exc
    from tvm import rpc

    try:
        tracker = rpc.connect_tracker(host, port)
        try:
            return tracker.summary()
        finally:
            tracker.close()
    except Exception as exc:  # a port that answers but is no tracker, or a tracker that broke mid-reply
        raise EdgekitError(
            f"{host}:{port} is not a working TVM RPC tracker ({one_line(exc, 160)})",
            "point rpc://… at the port 'python -m tvm.exec.rpc_tracker' or 'edgekit farm up' listens on",
        ) from exc


def boards_under(summary: dict, key: str) -> list[str]:
    """Addresses of the boards registered under ``key``."""
    return [f"{s['addr'][0]}:{s['addr'][1]}" for s in summary.get("server_info", []) if s["key"] == f"server:{key}"]


class RpcBoard(RemoteRunner):
    """One board, through an open RPC session: files go up as one tar, results come back as one tar."""

    name = "rpc"

    def __init__(self, session, facts: dict) -> None:
        self.session = session
        self.facts = facts
        self.where = f"board {facts['name']}"

    def install_hint(self, package: str) -> str:
        return f"on {self.where}: python3 -m pip install {package}, then restart its board server"

    def make_folder(self) -> str:
        return "."  # the session's private folder

    def push(self, sources: list[Path], remote: str) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for source in sources:
                tar.add(str(source), arcname=source.name)
        self.session.upload(bytearray(buf.getvalue()), "push.tar")
        self.session.get_function("edgekit.board.unpack")("push.tar")

    def execute(self, remote: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        reply = self.session.get_function("edgekit.board.run")(json.dumps(argv[1:]), float(timeout))
        out = json.loads(reply)
        return subprocess.CompletedProcess(argv, out["rc"], "", out["stderr"])

    def pull(self, remote: str, local: Path) -> None:
        data = bytes(self.session.get_function("edgekit.board.pack")(remote.removeprefix("./")))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(local, filter="data")

    def remove(self, remote: str) -> None:
        """Nothing to do: TVM removes the session's folder when the session ends."""


PLAIN_SERVER = "plain TVM RPC server"


def run_natively(session, build_dir: Path, inputs: Path, spec: RunSpec) -> RunResult:
    """A TVM build on a plain TVM RPC server, through TVM's own RPC: the library that loads there is
    uploaded, opened by the board's TVM runtime and driven by a remote Relax VM; timed by TVM's evaluator."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    manifest = json.loads((build_dir / "build.json").read_text())
    if manifest["backend"] != "tvm":
        raise RunnerError(
            f"the board is a {PLAIN_SERVER}: it runs TVM builds only; for {manifest['backend']} builds start "
            "edgekit's board server there (python3 board_server.py --tracker HOST:PORT --key KEY)"
        )
    started, errors = time.perf_counter(), []
    for machine, name in manifest["artifacts"].items():
        if not name.endswith(".so"):
            continue
        try:
            session.upload(str(build_dir / name), name)
            lib = session.load_module(name)
            break
        except Exception as exc:  # a library for another architecture does not load: try the next
            errors.append(f"{machine}: {one_line(exc, 120)}")
    else:
        raise RunnerError("no library of this build loads on the board (" + "; ".join(errors) + ")")
    dev = session.cpu()
    session.get_function("runtime.config_threadpool")(1, spec.threads)
    vm = VirtualMachine(lib, dev)
    load_s = time.perf_counter() - started
    names = [i["name"] for i in manifest["inputs"]]
    with np.load(inputs, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}

    def run(i: int) -> list[np.ndarray]:
        out = vm["main"](*[tvm.runtime.tensor(arrays[k][i : i + 1], device=dev) for k in names])
        outs = out if isinstance(out, (list, tuple)) or type(out).__name__ == "Array" else [out]
        return [o.numpy() for o in outs]

    t0 = time.perf_counter()
    outputs = [run(0)]
    first_ms = (time.perf_counter() - t0) * 1e3
    outputs += [run(i) for i in range(1, len(arrays[names[0]]))]
    vm.set_input("main", *[tvm.runtime.tensor(arrays[k][:1], device=dev) for k in names])
    timer = vm.time_evaluator("invoke_stateful", dev, number=1, repeat=spec.warmup + spec.runs)
    latencies = [t * 1e3 for t in timer("main").results][spec.warmup :]
    info = {
        "runtime": f"tvm RPC ({PLAIN_SERVER}: the board's TVM runtime, {machine} library)",
        "threads": spec.threads,
        "warmup": spec.warmup,
        "runs": spec.runs,
        "load_s": load_s,
        "first_inference_ms": first_ms,
        "latencies_ms": latencies,
        "peak_rss_mb": None,  # a plain server reports no memory
        "device": {"machine": machine, "cpu": "?", "cores": None, "kernel": "?", "python": "?"},
    }
    stacked = [np.concatenate([o[j] for o in outputs]) for j in range(len(outputs[0]))]
    return RunResult(stacked, info)


@dataclass
class BoardRun:
    """One board's part of a fanned-out run."""

    name: str
    facts: dict = field(default_factory=dict)
    result: RunResult | None = None
    error: str = ""
    timed_out: bool = False


class RpcRunner(Runner):
    """Boards of one device class behind a TVM RPC tracker; each build runs on ``boards`` of them at once."""

    name = "rpc"

    def __init__(self, url: str, target: Target, boards: int = 1) -> None:
        if boards < 1:
            raise EdgekitError(f"--boards {boards} must be ≥ 1", "pass --boards 1 or more")
        self.address = FarmAddress.parse(url)
        self.target = target
        self.boards = boards
        self.facts: list[dict] = []

    @property
    def arch(self) -> str:
        machines = [f["machine"] for f in self.facts if not f.get("plain")]
        return self.target.arch if self.target.arch in machines or not machines else machines[0]

    @property
    def emulated(self) -> bool:  # type: ignore[override]  # known once the boards are probed
        return bool(self.facts) and all(f.get("emulated") for f in self.facts)

    @property
    def any_emulated(self) -> bool:
        return any(f.get("emulated") for f in self.facts)

    def _request(self, timeout: float):
        from tvm import rpc

        tracker = rpc.connect_tracker(self.address.host, self.address.port)
        try:
            return tracker.request(self.address.key, priority=1, session_timeout=int(timeout))
        finally:
            tracker.close()

    @staticmethod
    def _probe(session) -> dict:
        """The board's facts; a plain TVM RPC server (no edgekit functions) says only that."""
        try:
            probe = session.get_function("edgekit.board.probe")
        except AttributeError:
            return {"name": PLAIN_SERVER, "plain": True, "machine": "?", "emulated": False}
        return json.loads(probe(json.dumps(["numpy", *runtime_modules()])))

    def prepare(self, log=lambda msg: None) -> None:
        a = self.address
        log(f"asking the RPC tracker {a.host}:{a.port} for {self.boards} '{a.key}' board(s)")
        found = boards_under(tracker_summary(a.host, a.port), a.key)
        if len(found) < self.boards:
            raise EdgekitError(
                f"the tracker at {a.host}:{a.port} has {len(found)} board(s) under key '{a.key}', "
                f"--boards {self.boards} needs {self.boards}",
                f"start more boards with that key, or pass --boards {max(1, len(found))}"
                if found
                else "start boards with 'edgekit farm board --tracker HOST:PORT --key KEY' (or check the key)",
            )

        def probe_one(_: int) -> dict:
            session = self._request(SESSION_SLACK_S)
            return self._probe(session)

        try:
            with ThreadPoolExecutor(self.boards) as pool:
                self.facts = list(pool.map(probe_one, range(self.boards)))
        except Exception as exc:
            raise EdgekitError(
                f"device {a.url}: a board did not answer ({one_line(exc, 200)})",
                "check the boards' board-server logs, or restart them",
            ) from exc

    def describe(self) -> str:
        a = self.address
        kinds = sorted(
            PLAIN_SERVER if f.get("plain") else f"{f['machine']}{' emulated' if f.get('emulated') else ''}"
            for f in self.facts
        )
        kinds = sorted(set(kinds))
        return f"RPC farm {a.url}: {self.boards} board(s) ({', '.join(kinds) or '?'})"

    def label(self) -> str:
        return f"rpc {self.address.key} ×{self.boards}"

    def _on_board(self, index: int, build_dir: Path, inputs: Path, work: Path, spec: RunSpec) -> BoardRun:
        run = BoardRun(f"board {index + 1} (not reached)")
        try:
            session = self._request(spec.timeout + SESSION_SLACK_S)
            run.facts = self._probe(session)
            run.name = run.facts["name"] if not run.facts.get("plain") else f"{PLAIN_SERVER} {index + 1}"
            if run.facts.get("plain"):
                run.result = run_natively(session, build_dir, inputs, spec)
                run.facts["machine"] = run.result.info["device"]["machine"]
            else:
                run.result = RpcBoard(session, run.facts).run(build_dir, inputs, work, spec)
        except RunnerTimeout as exc:
            run.error, run.timed_out = str(exc), True
        except Exception as exc:  # a board that fails or vanishes is its own row, never the whole run's failure
            run.error = one_line(exc, 300)
        return run

    def run(self, build_dir: Path, inputs: Path, work: Path, spec: RunSpec) -> RunResult:
        if not self.facts:
            self.prepare()
        start = time.perf_counter()
        with ThreadPoolExecutor(self.boards) as pool:
            jobs = [
                pool.submit(self._on_board, i, build_dir, inputs, work / f"board_{i + 1}", spec)
                for i in range(self.boards)
            ]
            runs = [job.result() for job in jobs]
        return merge(runs, time.perf_counter() - start, self.address)


def _max_abs_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float | None:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return None
    diffs = (np.abs(x.astype(np.float64) - y.astype(np.float64)) for x, y in zip(a, b, strict=True))
    return max(float(np.max(d, initial=0.0)) for d in diffs)


def merge(runs: list[BoardRun], wall_s: float, address: FarmAddress) -> RunResult:
    """One result from N boards: the first counted board's outputs, every counted board's latencies, and
    ``info["farm"]`` with per-board rows, the median p50, the spread and the outliers. Emulated boards are
    counted only when every board that finished is emulated (their timings are relative)."""
    ok = [r for r in runs if r.result is not None]
    if not ok:
        errors = "; ".join(f"{r.name}: {r.error}" for r in runs)
        raise (RunnerTimeout if all(r.timed_out for r in runs) else RunnerError)(f"every board failed — {errors}")
    counted = [r for r in ok if not r.facts.get("emulated")] or ok
    primary = counted[0].result
    p50 = {id(r): statistics.median(r.result.info["latencies_ms"]) for r in ok}
    middle = statistics.median(p50[id(r)] for r in counted)
    spread = (max(p50[id(r)] for r in counted) - min(p50[id(r)] for r in counted)) / middle if middle else 0.0
    boards = []
    for r in runs:
        entry = {"board": r.name, "machine": r.facts.get("machine", "?"), "emulated": bool(r.facts.get("emulated"))}
        if r.result is None:
            boards.append({**entry, "status": "failed", "error": r.error})
            continue
        is_counted = any(r is c for c in counted)
        outlier = (
            is_counted and len(counted) >= 3 and not middle / OUTLIER_RATIO <= p50[id(r)] <= middle * OUTLIER_RATIO
        )
        boards.append(
            {
                **entry,
                "status": "ok",
                "counted": is_counted,
                "outlier": outlier,
                "latency_ms": latency_stats(r.result.info["latencies_ms"]),
                "device": r.result.info["device"],
                "runtime": r.result.info["runtime"],
                "max_abs_diff_vs_first": _max_abs_diff(primary.outputs, r.result.outputs),
            }
        )
    info = {**primary.info, "latencies_ms": [t for r in counted for t in r.result.info["latencies_ms"]]}
    info["farm"] = {
        "tracker": f"{address.host}:{address.port}",
        "key": address.key,
        "boards": boards,
        "ok": len(ok),
        "failed": len(runs) - len(ok),
        "median_p50_ms": middle,
        "spread": spread,
        "counted": "every board that finished (all are emulated)"
        if counted == ok and ok[0].facts.get("emulated")
        else "the boards that are not emulated",
        "outputs_from": counted[0].name,
        "wall_s": wall_s,
    }
    return RunResult(primary.outputs, info)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Farm:
    """A tracker and local boards on 127.0.0.1 (``edgekit farm up``; tests): ``host_boards`` board servers on
    this machine and ``emulated`` inside the emulated arm64 device (timings labelled emulated). Every process
    runs in its own group and is killed by ``stop()``."""

    def __init__(
        self,
        key: str = "local",
        host_boards: int = 2,
        emulated: int = 0,
        port: int | None = None,
        log: Callable[[str], None] = lambda msg: None,
    ) -> None:
        if not SAFE_NAME.fullmatch(key):
            raise EdgekitError(f"key '{key}' is not a plain name", "use letters, digits, '.', '_' and '-'")
        if host_boards < 0 or emulated < 0 or host_boards + emulated == 0:
            raise EdgekitError("a farm needs at least one board", "pass --boards N and/or --emulated N")
        self.key, self.host_boards, self.emulated, self.log = key, host_boards, emulated, log
        self.port = port or free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs = Path(tempfile.mkdtemp(prefix="edgekit-farm-"))

    @property
    def url(self) -> str:
        return f"rpc://127.0.0.1:{self.port}/{self.key}"

    def _spawn(self, name: str, cmd: list[str], env: dict | None = None) -> None:
        with open(self.logs / f"{name}.log", "wb") as out:
            self.procs[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )

    def died(self) -> str | None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").strip().splitlines()[-1:]
                return f"{name} exited with code {proc.returncode}{': ' + tail[0] if tail else ''}"
        return None

    def start(self, timeout: float = 180.0) -> str:
        """Start the tracker and the boards; returns the farm's ``rpc://`` URL once every board is registered."""
        try:
            self._start(timeout)
        except BaseException:
            self.stop(keep_logs=True)  # the error names them
            raise
        return self.url

    def _start(self, timeout: float) -> None:
        tracker = [
            sys.executable,
            "-m",
            "tvm.exec.rpc_tracker",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--port-end",
            str(self.port + 1),
            "--silent",
        ]
        self._spawn("tracker", tracker)
        deadline = time.monotonic() + timeout
        self._wait(lambda: tracker_summary("127.0.0.1", self.port, timeout=1.0) is not None, deadline, "the tracker")
        board = [str(BOARD_SCRIPT), "--tracker", f"127.0.0.1:{self.port}", "--key", self.key, "--host", "127.0.0.1"]
        for i in range(self.host_boards):
            port = str(free_port())
            self._spawn(
                f"host-{i + 1}",
                [sys.executable, *board, "--port", port, "--port-end", str(int(port) + 1), "--name", f"host-{i + 1}"],
            )
        if self.emulated:
            from edgekit.runners import EmulatedRunner
            from edgekit.target import load_target

            device = EmulatedRunner(load_target("arm64"))
            device.prepare(self.log)
            image = device.images[0]
            for i in range(self.emulated):
                port = str(free_port())
                name = f"emulated-arm64-{i + 1}"
                python, _ = device.command(image, [])  # the board's runner is started through qemu too
                argv = [
                    *board,
                    "--port",
                    port,
                    "--port-end",
                    str(int(port) + 1),
                    "--name",
                    name,
                    "--emulated",
                    "--python",
                    json.dumps(python),
                ]
                cmd, env = device.command(image, argv)
                self._spawn(name, cmd, env)
        wanted = self.host_boards + self.emulated

        def registered() -> bool:
            return len(boards_under(tracker_summary("127.0.0.1", self.port, timeout=1.0), self.key)) >= wanted

        self._wait(registered, deadline, f"the farm's {wanted} board(s)")
        self.log(f"farm up: {self.url} ({self.host_boards} host board(s), {self.emulated} emulated arm64)")

    def _wait(self, ready: Callable[[], bool], deadline: float, what: str) -> None:
        """Poll until ``ready()``; a process that dies or the deadline ends the wait with an error."""
        while True:
            died = self.died()
            if died:
                raise EdgekitError(f"the farm did not start: {died}", f"see the logs in {self.logs}")
            try:
                if ready():
                    return
            except EdgekitError:
                pass  # the tracker is still starting
            if time.monotonic() > deadline:
                raise EdgekitError(f"{what} did not come up in time", f"see the logs in {self.logs}")
            time.sleep(0.3)

    def kill(self, name: str) -> None:
        """Kill one board (or the tracker) and everything it started."""
        procs.kill_group(self.procs.pop(name))

    def stop(self, keep_logs: bool = False) -> None:
        """Kill the boards, then the tracker; remove the logs unless ``keep_logs``."""
        import shutil

        for name in [n for n in self.procs if n != "tracker"] + ["tracker"]:
            if name in self.procs:
                self.kill(name)
        if not keep_logs:
            shutil.rmtree(self.logs, ignore_errors=True)

    def __enter__(self) -> Farm:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
