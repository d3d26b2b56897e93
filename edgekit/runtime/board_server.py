"""An edgekit board: a TVM RPC server, registered with a tracker under a key, that also runs edgekit's runner.

It needs only Python 3.9+ and the TVM runtime (``apache-tvm``), plus the runtimes of the builds it should
run (numpy, onnxruntime, ai-edge-litert, openvino); copy this one file to the board and start it:

    python3 board_server.py --tracker TRACKER_HOST:9190 --key rpi5 [--name rpi5-01] [--host 0.0.0.0]

Beside TVM's own RPC functions (upload, load_module: TVM modules run natively) each session has
``edgekit.board.probe`` (what the board is and which runtimes it has), ``edgekit.board.unpack`` (a tar of
the build, inputs, runner and backend runtime into the session's private folder), ``edgekit.board.run``
(the runner, killed after its time limit) and ``edgekit.board.pack`` (a folder of results, as tar bytes).
The session's folder is removed by TVM when the session ends. Like any TVM RPC server it runs what its
clients send: serve trusted networks only.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

BOARD = {"name": "", "emulated": False}
PYTHON = [sys.executable]  # how the runner is started (an emulated board: through its emulator)


def _workdir() -> Path:
    import tvm

    return Path(tvm.get_global_func("tvm.rpc.server.workpath")("."))


def probe(modules_json: str) -> str:
    """What this board is: machine, Python, CPU facts, its name, whether it is emulated, and which modules it has."""
    facts = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "have": {m: importlib.util.find_spec(m) is not None for m in json.loads(modules_json)},
        **BOARD,
    }
    return json.dumps(facts)


def unpack(name: str) -> int:
    """Extract the uploaded tar ``name`` into the session folder (members must stay inside it)."""
    root = _workdir().resolve()
    archive = root / name
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            dest = (root / member.name).resolve()
            if root not in dest.parents or not (member.isfile() or member.isdir()):
                raise ValueError(f"refused tar member {member.name!r}")
        tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    archive.unlink()
    return 0


def run(argv_json: str, timeout: float) -> str:
    """Run ``python ARGV…`` in the session folder under a kill timer: {"rc", "stderr"} (rc 137: killed)."""
    argv = [*PYTHON, *json.loads(argv_json)]
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    # the runner stays in the session's process group: a board server that is killed takes it along
    proc = subprocess.Popen(argv, cwd=_workdir(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        rc = 137
    return json.dumps({"rc": rc, "stderr": err.decode(errors="replace")[-4000:]})


def pack(folder: str) -> bytearray:
    """The session folder's ``folder`` as tar bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(str(_workdir() / folder), arcname=folder)
    return bytearray(buf.getvalue())


def random_fill(tensor) -> None:
    """MetaSchedule's measurement inputs (``tvm.contrib.random.random_fill_for_measure``), which TVM's
    runtime-only library lacks: random values in the tensor's own dtype."""
    import numpy as np

    dtype = np.dtype(str(tensor.dtype))
    rng = np.random.default_rng()
    if dtype.kind == "f":
        values = rng.uniform(-1.0, 1.0, tuple(tensor.shape)).astype(dtype)
    elif dtype.kind == "b":
        values = rng.integers(0, 2, tuple(tensor.shape)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -128), min(info.max, 127), tuple(tensor.shape), endpoint=True).astype(dtype)
    tensor.copyfrom(values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracker", required=True, help="HOST:PORT of the TVM RPC tracker")
    parser.add_argument("--key", required=True, help="the device class boards are requested by, e.g. rpi5")
    parser.add_argument("--name", default="", help="this board's name in reports (default: host:port)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=9090, help="first port to try")
    parser.add_argument("--port-end", type=int, default=9199, help="last port to try (exclusive)")
    parser.add_argument("--custom-addr", help="the address the tracker gives clients (default: as it sees us)")
    parser.add_argument("--emulated", action="store_true", help="this board is an emulator: timings are relative")
    parser.add_argument(
        "--python",
        help="JSON list: the command that starts this board's Python for the runner "
        "(an emulated board: its emulator's command line)",
    )
    args = parser.parse_args(argv)
    if args.python:
        PYTHON[:] = json.loads(args.python)
    host, _, port = args.tracker.rpartition(":")
    if not host or not port.isdigit():
        parser.error(f"--tracker {args.tracker!r} is not HOST:PORT (e.g. 10.0.0.5:9190)")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as exc:
        parser.error(f"no tracker answers at {args.tracker} ({exc}); start one: python -m tvm.exec.rpc_tracker")

    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    import tvm
    from tvm.rpc import server

    # sessions are forked from this process: the functions registered here are theirs
    multiprocessing.set_start_method("fork", force=True)
    for name, func in (("probe", probe), ("unpack", unpack), ("run", run), ("pack", pack)):
        tvm.register_global_func(f"edgekit.board.{name}", func, override=True)
    if tvm.get_global_func("tvm.contrib.random.random_fill_for_measure", allow_missing=True) is None:
        tvm.register_global_func("tvm.contrib.random.random_fill_for_measure", random_fill)
    bound = server._popen_start_rpc_server(
        args.host,
        args.port,
        args.port_end,
        tracker_addr=(host, int(port)),
        key=args.key,
        custom_addr=args.custom_addr,
        silent=True,
    )
    BOARD.update(name=args.name or f"{platform.node()}:{bound}", emulated=args.emulated)
    print(f"edgekit board {BOARD['name']} serving key '{args.key}' on port {bound}", flush=True)
    server.PopenRPCServerState.current.thread.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
