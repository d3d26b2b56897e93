"""How the pipeline reports what it is doing: messages, an overall bar with ETA, and a bar for the current step.

:class:`Progress` is what the library calls; on its own it only passes messages to a callback (or drops
them). The command line uses :class:`RichProgress`, which draws the bars on the terminal, and
:func:`third_party_output_hidden`, which sends what the libraries print (warnings, C++ logs) to a log file
(``logs/libraries.log`` in the output folder) instead of the terminal unless ``--verbose`` is given.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichBars

Advance = Callable[[int], None]
GLOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [^\]]*\] ")  # torch/absl: "W1126 04:01:15.48 573 file.py:107] "
GLOG_WARNING = re.compile(r"^W\d{4} ")


class Progress:
    """Messages go to ``log``; steps and counts are not shown (library use, ``--quiet``)."""

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self._log = log
        self.library_log: Path | None = None  # where library output was sent (copied into the output folder)
        self.verbose = False  # converters' own output is shown too (it is always kept in logs/)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, message: str) -> None:
        """Progress objects are also plain ``log(message)`` callables."""
        if self._log is not None:
            self._log(message)

    def plan(self, weight: float) -> None:
        """Add ``weight`` units of work to the overall total (a build ≈ 4, a device check ≈ 2, a stage ≈ 1)."""

    def done(self, weight: float) -> None:
        """Count ``weight`` planned units as done without a step (work that turned out not to be needed)."""

    @contextlib.contextmanager
    def step(self, description: str, weight: float = 1.0, total: int | None = None) -> Iterator[Advance]:
        """One step of ``weight`` overall units; ``total`` items (e.g. calibration samples) when known."""
        self(description)
        yield lambda n=1: None


def as_progress(log: Callable[[str], None] | Progress | None) -> Progress:
    return log if isinstance(log, Progress) else Progress(log)


class RichProgress(Progress):
    """An overall bar with elapsed time and ETA, and one bar (or spinner) for the current step."""

    def __init__(self, console: Console) -> None:
        super().__init__(None)
        self.console = console
        self.bars = RichBars(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            speed_estimate_period=600,
        )
        self.overall = self.bars.add_task("[bold]overall", total=0)
        self.current = None

    def __enter__(self) -> RichProgress:
        self.bars.start()
        return self

    def __exit__(self, *exc) -> None:
        self.bars.stop()

    def __call__(self, message: str) -> None:
        self.bars.console.log(message, _stack_offset=2)

    def plan(self, weight: float) -> None:
        task = self.bars.tasks[self.overall]
        self.bars.update(self.overall, total=(task.total or 0) + weight)

    def done(self, weight: float) -> None:
        self.bars.advance(self.overall, weight)

    @contextlib.contextmanager
    def step(self, description: str, weight: float = 1.0, total: int | None = None) -> Iterator[Advance]:
        self(description)
        task = self.bars.add_task(description, total=total)
        try:
            yield lambda n=1: self.bars.advance(task, n)
        finally:
            self.bars.remove_task(task)
            self.bars.advance(self.overall, weight)


@dataclass
class Streams:
    """Where edgekit's own console writes (the real stderr) and where library output went (None: terminal)."""

    terminal: TextIO
    library_log: Path | None


@contextlib.contextmanager
def third_party_output_hidden(verbose: bool) -> Iterator[Streams]:
    """Send everything written to file descriptors 1 and 2 (library warnings, C++ logs) to a log file.

    Nothing is redirected with ``verbose``, or when stdout/stderr are not the process's descriptors 1 and 2
    (e.g. in a test runner).
    """
    try:
        fds = (sys.stdout.fileno(), sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        fds = ()
    if verbose or fds != (1, 2):
        yield Streams(sys.stderr, None)
        return
    handle, name = tempfile.mkstemp(prefix="edgekit-", suffix=".log")
    saved = [os.dup(fd) for fd in fds]
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd in fds:
            os.dup2(handle, fd)
        yield Streams(terminal, Path(name))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip(fds, saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(handle)
        terminal.close()


def summarise_hidden(log: Path) -> str | None:
    """One line about what the libraries printed, or None when they printed nothing."""
    try:
        lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return None
    if not lines:
        return None
    warnings = [ln for ln in lines if "warn" in ln.lower() or GLOG_WARNING.match(ln)]
    example = GLOG_PREFIX.sub("", (warnings or lines)[0])
    return (
        f"{len(lines)} line(s) of library output hidden ({len(set(lines))} distinct"
        f"{f', {len(warnings)} warning(s)' if warnings else ''}; first: {example[:120]}) — --verbose shows them"
    )
