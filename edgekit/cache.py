"""The conversion cache: builds, the shared int8 graph, the fallback search and device measurements, keyed by
content and reused by an unchanged re-run.

A key hashes everything a build depends on: the bytes of the ONNX graph(s) it is made from (the export is
deterministic, so an unchanged model gives unchanged bytes), the calibration arrays, the target's
declaration, the backend options and quantization settings, the versions of the conversion libraries,
edgekit's own code, and the host CPU's feature flags (some builds are chosen by them). A measurement is
keyed by the build's bytes, the held-out data, the original's outputs on it, the device and the
repetitions; ``--recheck`` measures reused builds again. Only successful work is stored. Entries live
under ``$EDGEKIT_BUILD_CACHE`` (default ``<edgekit cache>/builds``; ``off`` disables it), are written
atomically, and the least recently used ones are dropped beyond ``$EDGEKIT_BUILD_CACHE_GB`` (default 5).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from functools import cache
from importlib import metadata
from pathlib import Path

import numpy as np

from edgekit.data import Dataset

CORE_LIBRARIES = ("numpy", "torch", "onnx", "onnxslim", "onnxruntime", "tensorflow", "tf2onnx", "nncf")
META = "entry.json"
MARK = "edgekit_cache"  # in every entry's META: only such folders are ever trimmed or cleared
TMP_PREFIX = ".edgekit-tmp-"


def cache_dir() -> Path | None:
    """Where builds are cached, or None when ``EDGEKIT_BUILD_CACHE=off``."""
    from edgekit.emulator import cache_root

    value = os.environ.get("EDGEKIT_BUILD_CACHE", "")
    if value.lower() in ("off", "0", "no", "false"):
        return None
    return Path(value) if value else cache_root() / "builds"


def limit_bytes() -> int:
    try:
        return int(float(os.environ.get("EDGEKIT_BUILD_CACHE_GB", "5")) * 1e9)
    except ValueError:
        return int(5e9)


@cache
def environment() -> dict:
    """What every key includes: library versions, edgekit's code, the host CPU's flags."""
    import edgekit
    import edgekit.converters
    from edgekit.converters import backend_names, backend_spec

    backends = [backend_spec(name) for name in backend_names()]
    versions = {}
    for name in sorted({*CORE_LIBRARIES, *(lib for b in backends for lib in b.libraries)}):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    code = hashlib.sha256()
    own = Path(edgekit.converters.__file__).parent  # holds the built-in backend folders
    external = {b.folder for b in backends if own not in b.folder.parents}  # from $EDGEKIT_BACKENDS
    for package in sorted({Path(edgekit.__file__).parent, own, *external}):
        for path in sorted(package.rglob("*.py")):
            code.update(str(path.relative_to(package)).encode() + path.read_bytes())
    flags = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        flags = next((ln for ln in lines if ln.startswith(("flags", "Features"))), "")
    return {
        "libraries": versions,
        "edgekit_code": code.hexdigest(),
        "machine": platform.machine(),
        "cpu_flags": hashlib.sha256(flags.encode()).hexdigest(),
    }


_file_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's files and names (memoised by path, size and mtime)."""
    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _file_digests:
        h = hashlib.sha256()
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        _file_digests[memo] = h.hexdigest()
    return _file_digests[memo]


def data_digest(data: Dataset) -> str:
    """sha256 of a dataset's input arrays (names, dtypes, shapes and values)."""
    names = sorted(data.inputs)
    return arrays_digest([data.inputs[n] for n in names], names)


def arrays_digest(arrays: list[np.ndarray], names: list[str] | None = None) -> str:
    """sha256 of arrays with their dtypes and shapes (and names)."""
    h = hashlib.sha256()
    for i, array in enumerate(arrays):
        a = np.ascontiguousarray(array)
        h.update(f"{names[i] if names else i}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def source_digest(source) -> str:
    """sha256 of the model as given: its file(s), or a PyTorch module's weights and the source files of its
    layer classes. (A cached export is still checked against the model's outputs before it is used.)"""
    if source.framework != "pytorch":
        return file_digest(Path(source.location))
    import inspect

    import torch

    h = hashlib.sha256(source.location.encode())
    for name, tensor in sorted(source.module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    files = set()
    for layer in source.module.modules():
        with contextlib.suppress(TypeError, OSError):
            files.add(inspect.getsourcefile(type(layer)))
    for file in sorted(f for f in files if f):
        h.update(file_digest(Path(file)).encode())
    return h.hexdigest()


def make_key(kind: str, parts: dict) -> str:
    """The cache key of a ``kind`` of work from its (JSON-serialisable) inputs and the environment."""
    blob = json.dumps({"kind": kind, "parts": parts, "environment": environment()}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _is_entry(folder: Path) -> bool:
    """A folder edgekit stored (its META carries the mark): a cache pointed at a user's folder touches nothing else."""
    try:
        return json.loads((folder / META).read_text()).get(MARK) == 1
    except (OSError, ValueError, AttributeError):
        return False


class BuildCache:
    """Content-keyed folders of finished work; a disabled cache misses every lookup and stores nothing."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def get(self, key: str, dest: Path) -> dict | None:
        """Copy the entry's files into ``dest`` (a new folder) and return its metadata; None on a miss."""
        if self.root is None:
            return None
        entry = self.root / key
        try:
            meta = json.loads((entry / META).read_text())
            shutil.copytree(entry / "files", dest)
            os.utime(entry)  # least recently used is dropped first
        except (OSError, ValueError):
            shutil.rmtree(dest, ignore_errors=True)
            return None
        return meta

    def put(self, key: str, src: Path | None, meta: dict) -> None:
        """Store a copy of ``src`` (a file, a folder, or nothing) and ``meta`` under ``key``, atomically."""
        if self.root is None:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=self.root))
            if src is not None and src.is_dir():
                shutil.copytree(src, tmp / "files")
            else:
                (tmp / "files").mkdir()
                if src is not None:
                    shutil.copy2(src, tmp / "files" / src.name)
            (tmp / META).write_text(json.dumps({**meta, MARK: 1, "stored": time.time()}))
            try:
                tmp.rename(self.root / key)
            except OSError:  # a concurrent run stored the same key first
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:  # a full disk or unwritable cache only costs the reuse
            return
        self.trim(limit_bytes())

    def entries(self) -> list[tuple[Path, int, float]]:
        """(folder, bytes, last use) of every complete entry."""
        if self.root is None or not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not _is_entry(entry):
                continue
            size = sum(f.stat().st_size for f in entry.rglob("*") if f.is_file())
            found.append((entry, size, entry.stat().st_mtime))
        return found

    def trim(self, limit: int) -> None:
        entries = sorted(self.entries(), key=lambda e: e[2])
        total = sum(size for _, size, _ in entries)
        while entries and total > limit:
            entry, size, _ = entries.pop(0)
            shutil.rmtree(entry, ignore_errors=True)
            total -= size

    def clear(self) -> tuple[int, int]:
        """Remove every entry (and leftovers of interrupted writes); returns (entries, bytes) removed."""
        entries = self.entries()
        for entry, _, _ in entries:
            shutil.rmtree(entry, ignore_errors=True)
        if self.root is not None and self.root.is_dir():
            for leftover in self.root.glob(f"{TMP_PREFIX}*"):
                shutil.rmtree(leftover, ignore_errors=True)
        return len(entries), sum(size for _, size, _ in entries)
