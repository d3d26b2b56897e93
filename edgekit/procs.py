"""Child processes that never outlive edgekit, and SIGTERM/SIGHUP handled like Ctrl-C.

Every tool edgekit starts (build workers, runners, qemu, ssh, adb) runs in its own process group;
whatever ends the call — completion, a time limit, Ctrl-C, SIGTERM from a CI cancel, SIGHUP from a
closed terminal — the whole group is killed before the call returns, so no worker or emulator is
left behind, and the ``finally`` blocks that remove staging folders run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator, Sequence


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived; unwinds (and cleans up) exactly like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def signals_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise :class:`Terminated` (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def kill_group(proc: subprocess.Popen) -> None:
    """Kill ``proc``'s whole process group (it was started as a group leader) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def run(
    cmd: Sequence[str],
    *,
    timeout: float | None = None,
    input: str | None = None,
    **kwargs,
) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, capture_output=True, text=True)`` in a new process group that is always killed.

    Raises ``subprocess.TimeoutExpired`` after ``timeout`` s, like ``subprocess.run``, once the group is gone.
    """
    stdin = subprocess.PIPE if input is not None else kwargs.pop("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(
        list(cmd),
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except BaseException:
        kill_group(proc)
        raise
    # The leader exited; anything it left running in its group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
