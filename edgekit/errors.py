"""Errors that reach the user as one line: what went wrong and how to fix it."""

from __future__ import annotations


class EdgekitError(Exception):
    """A problem with the user's input or environment; the CLI prints it and exits with code 2."""

    exit_code = 2

    def __init__(self, problem: str, fix: str):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} — fix: {self.fix}"


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first meaningful line of an exception, shortened for a report cell (keeping its end: the cause)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines and lines[0].startswith("Traceback") else (lines[0] if lines else "")
    text = f"{type(exc).__name__}: {text}" if not isinstance(exc, EdgekitError) else text
    return _shorten(text, limit)


def first_line(exc: BaseException, limit: int = 160) -> str:
    """The exception's first line (no type name), shortened in the middle so its end survives."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return _shorten(lines[0] if lines else type(exc).__name__, limit)


def _shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to ``limit`` characters, so both its start and its end (the cause) survive."""
    if len(text) <= limit:
        return text
    head = limit // 2
    return f"{text[: head - 1]} … {text[-(limit - head - 2) :]}"
