"""The SSH runner against a real OpenSSH server on 127.0.0.1 (throw-away keys), whose board is this host."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from edgekit import convert
from edgekit.errors import EdgekitError
from edgekit.runners import RunnerError, RunSpec, SshRunner
from tests.conftest import cnn_options

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not os.path.exists(SSHD), reason="openssh-server is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key", "stranger_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        f"PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nPidFile {d / 'sshd.pid'}\n"
        "Subsystem sftp internal-sftp\n"
    )
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.DEVNULL)
    for _ in range(50):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    host_key = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    (d / "empty_known_hosts").write_text("")
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    yield {
        "port": port,
        "dir": d,
        "user": user,
        "url": f"ssh://{user}@127.0.0.1:{port}?key={d / 'user_key'}&known_hosts={d / 'known_hosts'}"
        f"&python={sys.executable}",
    }
    proc.terminate()
    proc.wait(timeout=10)


def test_convert_and_check_over_ssh(tmp_path, board, cnn_case):
    report = convert(
        cnn_options(
            cnn_case,
            target="host",
            device=board["url"],
            eval=cnn_case["eval"],
            out=tmp_path / "o",
            backends=("onnxruntime", "tflite"),
            precisions=("int8",),
            runs=5,
            warmup=1,
        )
    )
    assert report["runner"].startswith(f"ssh board {board['user']}@127.0.0.1:{board['port']} (x86_64")
    for row in report["builds"]:
        assert row["status"] == "ok", row.get("reason")
        assert row["device"] == "ssh 127.0.0.1" and row["latency_kind"] == "measured"
        assert row["accuracy"]["top1_agreement"] >= 0.95 and row["latency_ms"]["n"] == 5
    leftovers = subprocess.run(["bash", "-c", "ls -d /tmp/edgekit.* 2>/dev/null"], capture_output=True, text=True)
    assert leftovers.stdout == "", "the runner must clean up its folder on the board"


def _url(board, **overrides) -> str:
    q = {
        "key": board["dir"] / "user_key",
        "known_hosts": board["dir"] / "known_hosts",
        "python": sys.executable,
        **overrides,
    }
    return f"ssh://{board['user']}@127.0.0.1:{board['port']}?" + "&".join(f"{k}={v}" for k, v in q.items())


def test_unreachable_board():
    with pytest.raises(EdgekitError, match=r"unreachable.*refused") as exc:
        SshRunner(f"ssh://root@127.0.0.1:{_free_port()}").prepare()
    assert "sshd runs on the board" in str(exc.value)


def test_wrong_key_is_an_authentication_failure(board):
    with pytest.raises(EdgekitError, match="authentication failed"):
        SshRunner(_url(board, key=board["dir"] / "stranger_key")).prepare()


def test_unknown_host_key_is_refused(board):
    with pytest.raises(EdgekitError, match="host key") as exc:
        SshRunner(_url(board, known_hosts=board["dir"] / "empty_known_hosts")).prepare()
    assert "ssh-keyscan" in str(exc.value)


def test_missing_runtime_on_the_board_is_named(tmp_path, board, cnn_case):
    # Debian's own /usr/bin/python3 has no numpy or runtimes: the board is told what to install, not changed.
    with pytest.raises(EdgekitError, match="numpy is missing"):
        SshRunner(_url(board, python="/usr/bin/python3")).prepare()
    device = SshRunner(_url(board))
    device.prepare()
    device.facts["have"]["openvino"] = False  # as on a board without OpenVINO
    build = tmp_path / "b"
    build.mkdir()
    (build / "build.json").write_text(json.dumps({"backend": "openvino"}))
    with pytest.raises(RunnerError, match=r"lacks the openvino runtime.*pip install openvino==2026.4.1"):
        device.run(build, tmp_path / "x.npz", tmp_path / "w", RunSpec(warmup=0, runs=1, threads=1, timeout=30))


def test_a_hanging_runner_is_killed_on_the_board(tmp_path, board, cnn_case):
    report = convert(
        cnn_options(
            cnn_case,
            target="host",
            out=tmp_path / "o",
            backends=("onnxruntime",),
            precisions=("fp32",),
            runs=1,
            warmup=0,
        )
    )
    assert report["builds"][0]["status"] == "ok"
    np.savez(tmp_path / "in.npz", x=np.load(cnn_case["eval"])["input"][:1])
    device = SshRunner(_url(board))
    with pytest.raises(RunnerError, match="timed out"):
        device.run(
            tmp_path / "o" / "onnxruntime_fp32",
            tmp_path / "in.npz",
            tmp_path / "w",
            RunSpec(warmup=0, runs=1_000_000, threads=1, timeout=3),
        )
    ps = subprocess.run(["pgrep", "-f", "runner_main.py onnxruntime_fp32"], capture_output=True, text=True)
    assert ps.stdout == "", "nothing may be left running on the board"
