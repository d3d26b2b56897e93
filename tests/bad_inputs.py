"""Makers of hostile and broken inputs for the bad-input corpus (tests/test_bad_inputs.py) and the fuzz tests.

Everything is made by the tests themselves, small, in a temporary folder.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import onnx
import torch


class Payload:
    """Pickles to a call that creates ``path``: proof that loading ran code."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def _rewrite_zip(src: Path, dest: Path, replace: dict[str, bytes], add: dict[str, bytes] | None = None) -> None:
    """Copy the zip ``src`` to ``dest`` with members ending in a key of ``replace`` swapped for its bytes."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        prefix = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            data = zin.read(info.filename)
            for suffix, new in replace.items():
                if info.filename.endswith(suffix):
                    data = new
            zout.writestr(info, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{prefix}/{name}", data)


def _payload_bytes(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    return buffer.getvalue()


def export_archive(model: torch.nn.Module, path: Path) -> Path:
    torch.export.save(torch.export.export(model, (torch.zeros(1, 1, 8, 8),)), str(path))
    return path


def pickled_weight_archive(clean: Path, dest: Path, marker: Path) -> Path:
    """A torch.export archive whose weights config marks weight_0 ``use_pickle`` and carries a payload there."""
    with zipfile.ZipFile(clean) as zf:
        name = next(n for n in zf.namelist() if n.endswith("_weights_config.json"))
        config = json.loads(zf.read(name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    path_name = config["config"][first]["path_name"]
    _rewrite_zip(
        clean,
        dest,
        {name.split("/", 1)[1]: json.dumps(config).encode(), f"data/weights/{path_name}": _payload_bytes(marker)},
    )
    return dest


def pickled_sample_inputs_archive(clean: Path, dest: Path, marker: Path) -> Path:
    """A torch.export archive whose sample inputs are a payload (torch retries them with full pickle)."""
    with zipfile.ZipFile(clean) as zf:
        name = next(n for n in zf.namelist() if "/data/sample_inputs/" in n)
    _rewrite_zip(clean, dest, {name.split("/", 1)[1]: _payload_bytes(marker)})
    return dest


def opaque_constant_archive(clean: Path, dest: Path, marker: Path) -> Path:
    """A torch.export archive with an ``opaque_obj_`` constant (loaded with ``pickle.loads``)."""
    import pickle

    with zipfile.ZipFile(clean) as zf:
        name = next(n for n in zf.namelist() if n.endswith("_constants_config.json"))
        config = json.loads(zf.read(name))
    config.setdefault("config", {})["evil"] = {
        "path_name": "opaque_obj_0",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    _rewrite_zip(
        clean,
        dest,
        {name.split("/", 1)[1]: json.dumps(config).encode()},
        {"data/constants/opaque_obj_0": pickle.dumps(Payload(marker))},
    )
    return dest


def native_code_archive(clean: Path, dest: Path) -> Path:
    """A torch.export archive that carries an AOTInductor shared library."""
    _rewrite_zip(clean, dest, {}, {"data/aotinductor/model/model.so": b"\x7fELF" + bytes(60)})
    return dest


def onnx_with_opset(src: Path, dest: Path, version: int) -> Path:
    model = onnx.load(str(src))
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = version
    onnx.save(model, str(dest))
    return dest


def onnx_with_int64_input(src: Path, dest: Path) -> Path:
    model = onnx.load(str(src))
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    onnx.save(model, str(dest))
    return dest


def decompression_bomb_png(path: Path, side: int = 40_000) -> Path:
    """A tiny PNG whose header claims side × side pixels (Pillow refuses > 2 × MAX_IMAGE_PIXELS)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    body = zlib.compress(b"\x00" * (side + 1))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path
