"""Targets: one declarative TOML file per device class in ``targets/``."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.safety import regular_file

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class Target:
    """What a target is and how edgekit builds for it and checks the builds."""

    name: str
    description: str
    triple: str
    arch: str
    cpu: str
    mattr: tuple[str, ...]
    backends: tuple[str, ...]
    default_precisions: tuple[str, ...]  # built when --precision is not given
    runner: str
    cross_compiler: str = ""
    platform: str = "linux"  # linux | android | ios | fpga
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Target:
        """The target a build manifest or a build job recorded (lists back to tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    def options(self, backend: str) -> dict:
        """The target file's table for ``backend`` (e.g. ``[onnxruntime] format = "ort"``)."""
        return self.extra.get(backend, {})

    def tvm_target(self) -> dict:
        """The JSON-dict LLVM target TVM 0.27 expects."""
        target: dict = {"kind": "llvm", "mtriple": self.triple}
        if self.cpu:
            target["mcpu"] = self.cpu
        if self.mattr:
            target["mattr"] = list(self.mattr)
        target.update(self.extra.get("tvm", {}))
        return target


def _target_files() -> dict[str, Path]:
    folder = resources.files("edgekit.targets")
    return {Path(f.name).stem: Path(str(f)) for f in folder.iterdir() if f.name.endswith(".toml")}


def list_targets() -> list[Target]:
    """Every target shipped with edgekit, sorted by name."""
    return [load_target(name) for name in sorted(_target_files())]


def load_target(name_or_path: str) -> Target:
    """Load a target by name (``arm64``) or from a TOML file path."""
    files = _target_files()
    path = Path(name_or_path) if name_or_path.endswith(".toml") else files.get(name_or_path)
    if path is None or not path.is_file():
        raise EdgekitError(
            f"unknown target '{name_or_path}'",
            f"use one of: {', '.join(sorted(files))} (see `edgekit targets`), or a path to a target .toml",
        )
    regular_file(path, "target file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgekitError(f"target file {path} is not valid TOML ({exc})", "fix the syntax") from exc
    return _target_from(path, data)


def _field(path: Path, data: dict, key: str, kind: type, default=None):
    """``data[key]`` checked against ``kind`` (str, or a list of str); a missing required key is named."""
    if key not in data:
        if default is None:
            raise EdgekitError(f"target file {path} has no '{key}'", f"add {key} = … (see targets/arm64.toml)")
        return default
    value = data[key]
    ok = isinstance(value, str) if kind is str else isinstance(value, list) and all(isinstance(v, str) for v in value)
    if not ok:
        what = "a string" if kind is str else "a list of strings"
        raise EdgekitError(f"target file {path}: '{key}' must be {what}, not {value!r}"[:300], f"fix '{key}'")
    return tuple(value) if kind is list else value


def _target_from(path: Path, data: dict) -> Target:
    from edgekit.converters import backend_names

    precision = data.get("default_precision", "fp32")
    defaults = tuple(precision) if isinstance(precision, list) else (precision,)
    if not defaults or any(p not in PRECISIONS for p in defaults):
        raise EdgekitError(f"target {path}: default_precision {precision!r}", f"use one or more of {PRECISIONS}")
    backends = _field(path, data, "backends", list)
    known = backend_names()
    unknown = [b for b in backends if b not in known]
    if not backends or unknown:
        raise EdgekitError(
            f"target file {path}: backends {list(backends)} "
            + (f"include unknown {unknown}" if unknown else "is empty"),
            f"use some of {', '.join(known)}",
        )
    return Target(
        name=_field(path, data, "name", str, path.stem),
        description=_field(path, data, "description", str, ""),
        triple=_field(path, data, "triple", str),
        arch=_field(path, data, "arch", str),
        cpu=_field(path, data, "cpu", str, ""),
        mattr=_field(path, data, "mattr", list, ()),
        backends=backends,
        default_precisions=defaults,
        runner=_field(path, data, "runner", str, "host"),
        cross_compiler=_field(path, data, "cross_compiler", str, ""),
        platform=_field(path, data, "platform", str, "linux"),
        extra={k: v for k, v in data.items() if isinstance(v, dict)},  # per-backend tables: [tvm], [fpga], …
    )
