"""Targets: one declarative TOML file per device class in ``targets/``."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from edgekit.errors import EdgekitError

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
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise EdgekitError(f"target file {path} is not valid TOML ({exc})", "fix the syntax") from exc
    precision = data.get("default_precision", "fp32")
    defaults = tuple(precision) if isinstance(precision, list) else (precision,)
    if not defaults or any(p not in PRECISIONS for p in defaults):
        raise EdgekitError(f"target {path}: default_precision {precision!r}", f"use one or more of {PRECISIONS}")
    return Target(
        name=data.get("name", path.stem),
        description=data.get("description", ""),
        triple=data["triple"],
        arch=data["arch"],
        cpu=data.get("cpu", ""),
        mattr=tuple(data.get("mattr", ())),
        backends=tuple(data["backends"]),
        default_precisions=defaults,
        runner=data.get("runner", "host"),
        cross_compiler=data.get("cross_compiler", ""),
        platform=data.get("platform", "linux"),
        extra={k: v for k, v in data.items() if isinstance(v, dict)},  # per-backend tables: [tvm], [fpga], …
    )
