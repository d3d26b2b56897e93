"""Guards that keep edgekit from harming the user's files: what ``--out`` may replace, and what an input may be.

edgekit only ever replaces a folder it wrote itself (it carries :data:`MARKER`). Everything is written to
a private staging folder beside the output and moved into place at the end; staging folders left by a
run that was killed with SIGKILL are removed by the next run into the same parent folder.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path

from edgekit.errors import EdgekitError

MARKER = ".edgekit-output"
STAGING_MARK = ".edgekit-staging"  # in every staging folder, so only edgekit's own leftovers are ever removed
_STAGING = re.compile(r"^\.(?P<name>.+)\.edgekit-(?P<pid>\d+)-[A-Za-z0-9_]+$")
_OLD = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def regular_file(path: Path, what: str) -> Path:
    """``path`` if it is an existing regular file (not a FIFO, device or folder), else a one-line error."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise EdgekitError(f"{what} '{path}' does not exist", "check the path") from None
    except OSError as exc:
        raise EdgekitError(f"{what} '{path}' cannot be read ({exc.strerror})", "check the path") from exc
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
        raise EdgekitError(f"{what} '{path}' is {kind}", "pass a regular file")
    if not os.access(path, os.R_OK):
        raise EdgekitError(f"{what} '{path}' is not readable", "fix its permissions")
    return path


def file_or_folder(path: Path, what: str) -> Path:
    """``path`` if it is a regular file or a folder (a FIFO would block forever)."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if stat.S_ISDIR(path.stat().st_mode):
            return path
    return regular_file(path, what)


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def check_output_folder(out: Path, inputs: list[Path], flag: str = "--out") -> Path:
    """The resolved ``out`` if edgekit may create or replace it; a one-line error before any work otherwise.

    Refused: an existing file, a symlink, a non-empty folder edgekit did not write, ``/``, the home folder,
    the current folder or any folder above it, and any folder that contains or equals an input.
    """
    raw = Path(out).expanduser()
    if raw.is_symlink():
        raise EdgekitError(f"{flag} '{out}' is a symbolic link", f"give {flag} a real folder path")
    resolved = raw.resolve()
    fix = f"choose a new folder for {flag}, e.g. {flag} build/model"
    protected = {Path("/"): "the root folder", Path.home().resolve(): "your home folder"}
    if resolved in protected:
        raise EdgekitError(f"{flag} '{out}' is {protected[resolved]}; edgekit would replace it", fix)
    cwd = Path.cwd().resolve()
    if _is_within(cwd, resolved):
        raise EdgekitError(f"{flag} '{out}' is the current folder or contains it; edgekit would replace it", fix)
    for item in inputs:
        item = Path(item).expanduser().resolve()
        if _is_within(item, resolved):
            raise EdgekitError(f"{flag} '{out}' contains the input '{item}'; edgekit would replace it", fix)
    if resolved.exists() or resolved.is_symlink():
        if not resolved.is_dir():
            raise EdgekitError(f"{flag} '{out}' is an existing file; edgekit writes a folder there", fix)
        if any(resolved.iterdir()) and not (resolved / MARKER).is_file():
            raise EdgekitError(
                f"{flag} '{out}' is a non-empty folder that edgekit did not write",
                f"{fix}; edgekit only replaces folders it wrote (they hold {MARKER})",
            )
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise EdgekitError(f"{flag} '{out}': '{parent}' is a file, not a folder", fix)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgekitError(f"{flag} '{out}': '{parent}' is not writable", fix)
    return resolved


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> None:
    """Remove staging and half-replaced folders of ``out`` whose edgekit process no longer runs.

    A folder is removed only if it carries edgekit's own mark (a staging folder its :data:`STAGING_MARK`,
    a replaced output its :data:`MARKER`): a user's ``.build.old-2024`` backup is never touched.
    """
    with contextlib.suppress(OSError):
        for entry in out.parent.iterdir():
            m, mark = _STAGING.match(entry.name), STAGING_MARK
            if m is None:
                m, mark = _OLD.match(entry.name), MARKER
            if m is None or m.group("name") != out.name or not (entry / mark).is_file():
                continue
            pid = int(m.group("pid"))
            if pid != os.getpid() and not _alive(pid):
                shutil.rmtree(entry, ignore_errors=True)


class Staging:
    """A private folder beside ``out`` (``.NAME.edgekit-PID-XXXX``): work happens there, ``publish`` moves it in.

    Folders created to hold ``out`` are removed again when nothing is published.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        missing = []
        parent = out.parent
        while not parent.exists():
            missing.append(parent)
            parent = parent.parent
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(out)
            self.root = Path(tempfile.mkdtemp(prefix=f".{out.name}.edgekit-{os.getpid()}-", dir=out.parent))
            (self.root / STAGING_MARK).touch()
        except OSError as exc:
            self._remove(missing)
            raise EdgekitError(f"cannot write next to '{out}' ({exc.strerror})", "choose a writable --out") from exc
        self.created = missing
        self.published = False

    @staticmethod
    def _remove(folders: list[Path]) -> None:
        for folder in folders:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()

    def publish(self, staged: Path) -> None:
        """Replace ``out`` (absent, empty, or an earlier edgekit output) with ``staged`` in two renames."""
        if self.out.is_dir() and any(self.out.iterdir()) and not (self.out / MARKER).is_file():
            raise EdgekitError(
                f"--out '{self.out}' received files edgekit did not write while it ran; nothing was replaced",
                "run again with a new --out folder",
            )
        (staged / MARKER).write_text("This folder was written by edgekit; edgekit may replace it.\n")
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            self.out.rename(old)
        staged.rename(self.out)
        self.published = True
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if not self.published:
            self._remove(self.created)

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_result_file(path: Path, flag: str, inputs: tuple[Path, ...] = ()) -> Path:
    """A file edgekit will write a finished result to (``diff --out``, ``--plot``): checked before the work."""
    path = Path(path).expanduser()
    fix = f"give {flag} a file path in an existing, writable folder"
    if path.is_dir():
        raise EdgekitError(f"{flag} '{path}' is a folder", fix)
    if path.exists() and not path.is_file():
        raise EdgekitError(f"{flag} '{path}' is not a regular file (a pipe or device)", fix)
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise EdgekitError(f"{flag} '{path}' is one of the inputs; edgekit would overwrite it", fix)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise EdgekitError(f"{flag} '{path}': the folder '{parent}' does not exist", fix)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgekitError(f"{flag} '{path}': the folder '{parent}' is not writable", fix)
    return path
