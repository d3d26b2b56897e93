"""The bad-input corpus: every case ends in one line naming the problem and a fix, exit code 2, and nothing touched.

For each case the test asserts: the exit code, exactly one ``error: … — fix: …`` line and no traceback, that
no file or folder under the test's folder (the inputs, the older output, the current folder) changed or
appeared, that the older edgekit output survived byte for byte, and that no child process is left running.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from typer.testing import CliRunner

from edgekit import ConvertOptions, convert
from edgekit.cli import app
from edgekit.safety import MARKER
from tests import bad_inputs as bad

runner = CliRunner()
CNN = "edgekit.models.small_cnn:SmallCNN"


@dataclass
class Ctx:
    """What a case builds its command line from (all paths inside the case's own folder)."""

    root: Path  # the current folder during the case
    onnx: Path
    weights: Path
    calib: Path
    eval: Path
    build: Path  # a finished convert output (for diff/profile)
    digits: np.ndarray
    labels: np.ndarray

    def p(self, name: str) -> Path:
        return self.root / name

    def convert(self, model: str | Path, *args: str | Path, out: str | Path = "out") -> list[str]:
        has_calib = any(str(a) == "--calib" for a in args)
        calib = [] if has_calib or "--no-calib" in map(str, args) else ["--calib", str(self.calib)]
        args = tuple(a for a in args if str(a) != "--no-calib")
        return ["convert", str(model), *calib, *map(str, args), "--out", str(out), "--target", "host"]

    def cnn(self, *args: str | Path, out: str | Path = "out") -> list[str]:
        return self.convert(CNN, "--weights", self.weights, *args, out=out)


@dataclass(frozen=True)
class Case:
    id: str
    argv: Callable[[Ctx], list[str]]
    expect: str  # a fragment of the one error line
    marker: bool = False  # the case carries a code payload that would create ctx.p("pwned.txt")


def _folder(ctx: Ctx, name: str) -> Path:
    """An empty folder (no images) under the case's root."""
    path = ctx.p(name)
    path.mkdir()
    return path


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _images(ctx: Ctx, *extra: Callable[[Path], Path]) -> Path:
    from PIL import Image

    folder = ctx.p("photos")
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.clip(ctx.digits[i, 0] * 16, 0, 255).astype(np.uint8)).resize((16, 16)).save(
            folder / f"d{i}.png"
        )
    for make in extra:
        make(folder)
    return folder


def _target(ctx: Ctx, text: str) -> Path:
    return _write(ctx.p("board.toml"), text)


def _ts(ctx: Ctx) -> Path:
    from edgekit.models.small_cnn import SmallCNN

    path = ctx.p("m.ts")
    torch.jit.save(torch.jit.trace(SmallCNN().eval(), torch.zeros(1, 1, 8, 8)), str(path))
    return path


def _clean_pt2(ctx: Ctx) -> Path:
    from edgekit.models.small_cnn import SmallCNN

    return bad.export_archive(SmallCNN().eval(), ctx.p("clean.pt2"))


def _data(ctx: Ctx, name: str, **arrays) -> Path:
    return bad.npz(ctx.p(name), **arrays)


def _x(ctx: Ctx, n: int = 20) -> np.ndarray:
    return ctx.digits[:n].copy()


def _nan(ctx: Ctx) -> np.ndarray:
    x = _x(ctx)
    x[3, 0, 2, 2] = np.nan
    return x


def _inf(ctx: Ctx) -> np.ndarray:
    x = _x(ctx)
    x[1, 0, 0, 0] = np.inf
    return x


def _py(ctx: Ctx, body: str) -> str:
    return f"{_write(ctx.p('netdef.py'), body)}:build"


def _foreign(ctx: Ctx) -> Path:
    folder = ctx.p("notes")
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


def _file_parent(ctx: Ctx) -> Path:
    return _write(ctx.p("afile"), "x") / "sub" / "out"


def _symlink(ctx: Ctx) -> Path:
    real = ctx.p("real")
    real.mkdir()
    (ctx.p("link")).symlink_to(real)
    return ctx.p("link")


def _damaged_build(ctx: Ctx, text: str) -> Path:
    folder = ctx.p("broken_build")
    folder.mkdir()
    (folder / "build.json").write_text(text)
    return folder


def _build(ctx: Ctx) -> Path:
    return ctx.build / "onnxruntime_fp32"


def _samples(ctx: Ctx) -> Path:
    return _data(ctx, "sample.npz", input=_x(ctx, 4))


CASES = [
    # --- models ---
    Case("missing-model", lambda c: c.convert(c.p("nope.onnx")), "does not exist"),
    Case("empty-onnx", lambda c: c.convert(_write(c.p("e.onnx"), "")), "is empty"),
    Case(
        "truncated-onnx",
        lambda c: c.convert(_truncate(c.onnx, c.p("t.onnx"))),
        "not a valid ONNX file",
    ),
    Case("onnx-opset-99", lambda c: c.convert(bad.onnx_with_opset(c.onnx, c.p("o99.onnx"), 99)), "cannot load it"),
    Case(
        "onnx-int64-into-conv",
        lambda c: c.convert(bad.onnx_with_int64_input(c.onnx, c.p("i64.onnx"))),
        "tensor(int64)",
    ),
    Case("onnx-is-a-fifo", lambda c: c.convert(bad.fifo(c.p("pipe.onnx"))), "not a regular file"),
    Case("onnx-is-a-folder", lambda c: c.convert(c.p("dir.onnx").mkdir() or c.p("dir.onnx")), "is a folder"),
    Case("pt-random-bytes", lambda c: c.convert(_write(c.p("r.pt"), "garbage" * 9)), "not a PyTorch archive"),
    Case("torchscript-untrusted", lambda c: c.convert(_ts(c)), "TorchScript archive"),
    Case(
        "torchscript-truncated",
        lambda c: c.convert(_truncate(_ts(c), c.p("x.pt"))),
        "corrupt or truncated",
    ),
    Case("state-dict-as-model", lambda c: c.convert(c.weights), "--weights"),
    Case(
        "pt2-pickled-weight",
        lambda c: c.convert(bad.pickled_weight_archive(_clean_pt2(c), c.p("evil.pt2"), c.p("pwned.txt"))),
        "run code when loaded",
        marker=True,
    ),
    Case(
        "pt2-pickled-weight-renamed-pt",
        lambda c: c.convert(bad.pickled_weight_archive(_clean_pt2(c), c.p("evil.pt"), c.p("pwned.txt"))),
        "run code when loaded",
        marker=True,
    ),
    Case(
        "pt2-pickled-sample-inputs",
        lambda c: c.convert(bad.pickled_sample_inputs_archive(_clean_pt2(c), c.p("evil2.pt2"), c.p("pwned.txt"))),
        "run code when loaded",
        marker=True,
    ),
    Case(
        "pt2-opaque-constant",
        lambda c: c.convert(bad.opaque_constant_archive(_clean_pt2(c), c.p("evil3.pt2"), c.p("pwned.txt"))),
        "run code when loaded",
        marker=True,
    ),
    Case(
        "pt2-native-code",
        lambda c: c.convert(bad.native_code_archive(_clean_pt2(c), c.p("evil4.pt2"))),
        "native code",
    ),
    Case("py-syntax-error", lambda c: c.convert(_py(c, "def build(:\n")), "SyntaxError"),
    Case("py-import-error", lambda c: c.convert(_py(c, "import no_such_module_xyz\n")), "ModuleNotFoundError"),
    Case("py-exits-on-import", lambda c: c.convert(_py(c, "import sys\nsys.exit(3)\n")), "SystemExit"),
    Case(
        "callable-calls-sys-exit",
        lambda c: c.convert(_py(c, "import sys\ndef build():\n    sys.exit(0)\n")),
        "calling it failed",
    ),
    Case("callable-returns-int", lambda c: c.convert(_py(c, "def build():\n    return 3\n")), "not a torch.nn.Module"),
    Case(
        "callable-raises",
        lambda c: c.convert(_py(c, "def build():\n    raise RuntimeError('boom')\n")),
        "boom",
    ),
    Case("missing-module", lambda c: c.convert("no_such_pkg_abc.models:net"), "importing"),
    Case("missing-attribute", lambda c: c.convert("edgekit.models.small_cnn:Nope"), "has no attribute"),
    Case("missing-py-file", lambda c: c.convert(f"{c.p('gone.py')}:build"), "does not exist"),
    Case(
        "weights-do-not-fit",
        lambda c: c.cnn("--weights", _save(c.p("w.pt"), {"extra.weight": torch.zeros(3, 3)})),
        "unexpected: extra.weight",
    ),
    Case("weights-random-bytes", lambda c: c.cnn("--weights", _write(c.p("w.pt"), "no")), "cannot be read"),
    Case(
        "weights-not-a-dict",
        lambda c: c.cnn("--weights", _save(c.p("w.pt"), [torch.zeros(2)])),
        "not a state dict",
    ),
    Case("weights-with-onnx", lambda c: c.convert(c.onnx, "--weights", c.weights), "--weights is only used"),
    Case("weights-fifo", lambda c: c.cnn("--weights", bad.fifo(c.p("w.fifo"))), "not a regular file"),
    Case("tflite-garbage", lambda c: c.convert(_write(c.p("m.tflite"), "x")), "not a TFLite flatbuffer"),
    Case("keras-garbage", lambda c: c.convert(_write(c.p("m.keras"), "x")), "cannot be loaded by Keras"),
    Case("savedmodel-folder-empty", lambda c: c.convert(c.p("sm").mkdir() or c.p("sm")), "not a SavedModel"),
    Case("pb-file", lambda c: c.convert(_write(c.p("graph.pb"), "x")), "not a SavedModel"),
    Case("unknown-format", lambda c: c.convert(_write(c.p("m.xyz"), "x")), "unknown format"),
    # --- data ---
    Case("calib-fifo", lambda c: c.convert(c.onnx, "--calib", bad.fifo(c.p("calib.npz"))), "not a regular file"),
    Case("calib-nan", lambda c: c.convert(c.onnx, "--calib", _data(c, "n.npz", input=_nan(c))), "NaN/inf"),
    Case(
        "eval-inf",
        lambda c: c.convert(c.onnx, "--eval", _data(c, "i.npz", input=_inf(c), labels=c.labels[:20])),
        "NaN/inf",
    ),
    Case(
        "labels-one-hot",
        lambda c: c.convert(
            c.onnx, "--eval", _data(c, "o.npz", input=_x(c), labels=np.eye(10, dtype=np.int64)[c.labels[:20]])
        ),
        "one class index",
    ),
    Case(
        "labels-fractional",
        lambda c: c.convert(c.onnx, "--eval", _data(c, "f.npz", input=_x(c), labels=np.full(20, 0.5))),
        "not integer class indices",
    ),
    Case(
        "labels-negative",
        lambda c: c.convert(c.onnx, "--eval", _data(c, "g.npz", input=_x(c), labels=-np.ones(20, np.int64))),
        "start at 0",
    ),
    Case(
        "labels-out-of-range",
        lambda c: c.convert(c.onnx, "--eval", _data(c, "r.npz", input=_x(c), labels=np.full(20, 12))),
        "10 classes",
    ),
    Case(
        "labels-wrong-length",
        lambda c: c.convert(c.onnx, "--eval", _data(c, "l.npz", input=_x(c), labels=c.labels[:5])),
        "different lengths",
    ),
    Case(
        "image-decompression-bomb",
        lambda c: c.convert(
            c.onnx, "--calib", _images(c, lambda f: bad.decompression_bomb_png(f / "zbomb.png")), "--std", "255"
        ),
        "too large to decode",
    ),
    Case(
        "image-corrupt",
        lambda c: c.convert(c.onnx, "--calib", _images(c, lambda f: _write(f / "broken.jpg", "not a jpeg"))),
        "not a readable image",
    ),
    Case("image-folder-empty", lambda c: c.convert(c.onnx, "--calib", c.p("e").mkdir() or c.p("e")), "no images"),
    Case("calib-txt", lambda c: c.convert(c.onnx, "--calib", _write(c.p("c.txt"), "1 2 3")), "unsupported file"),
    Case(
        "calib-truncated-npz",
        lambda c: c.convert(c.onnx, "--calib", _truncate(c.calib, c.p("cut.npz"))),
        "cannot be read",
    ),
    Case(
        "calib-object-array",
        lambda c: c.convert(c.onnx, "--calib", _data(c, "obj.npz", input=np.array([{"a": 1}, None], dtype=object))),
        "cannot be read",
    ),
    Case(
        "calib-strings",
        lambda c: c.convert(c.onnx, "--calib", _data(c, "s.npz", input=np.array(["a", "b"]))),
        "dtype",
    ),
    Case(
        "calib-wrong-shape",
        lambda c: c.convert(c.onnx, "--calib", _data(c, "w.npz", input=np.zeros((4, 1, 10, 10), np.float32))),
        "(1, 10, 10)",
    ),
    Case(
        "calib-zero-samples",
        lambda c: c.convert(c.onnx, "--calib", _data(c, "z.npz", input=np.zeros((0, 1, 8, 8), np.float32))),
        "zero sample counts",
    ),
    Case(
        "calib-wrong-names",
        lambda c: c.convert(c.onnx, "--calib", _data(c, "nm.npz", a=_x(c), b=_x(c))),
        "needs inputs",
    ),
    Case(
        "calib-one-sample",
        lambda c: c.convert(c.onnx, "--calib", _data(c, "one.npz", input=_x(c, 1))),
        "at least 2 samples",
    ),
    Case("calib-missing-flag", lambda c: c.convert(c.onnx, "--no-calib"), "no calibration data"),
    Case("eval-missing", lambda c: c.convert(c.onnx, "--eval", c.p("nope.npz")), "does not exist"),
    Case("eval-folder-without-images", lambda c: c.convert(c.onnx, "--eval", _folder(c, "shots")), "no images"),
    Case("train-without-prune", lambda c: c.cnn("--train", c.eval), "--train is only used"),
    # --- options ---
    Case("threads-0", lambda c: c.convert(c.onnx, "--threads", "0"), "--threads 0"),
    Case("runs-0", lambda c: c.convert(c.onnx, "--runs", "0"), "--runs 0"),
    Case("warmup-negative", lambda c: c.convert(c.onnx, "--warmup", "-1"), "--warmup -1"),
    Case("calib-size-0", lambda c: c.convert(c.onnx, "--calib-size", "0"), "--calib-size 0"),
    Case("calib-size-negative", lambda c: c.convert(c.onnx, "--calib-size", "-5"), "--calib-size -5"),
    Case("eval-size-0", lambda c: c.convert(c.onnx, "--eval-size", "0"), "--eval-size 0"),
    Case("mean-not-a-number", lambda c: c.convert(c.onnx, "--mean", "abc"), "--mean 'abc'"),
    Case("std-zero", lambda c: c.convert(c.onnx, "--std", "0"), "non-zero"),
    Case("mean-two-values", lambda c: c.convert(c.onnx, "--mean", "1,2"), "1 or 3 values"),
    Case("std-nan", lambda c: c.convert(c.onnx, "--std", "nan"), "not finite"),
    Case("input-shape-zero-dim", lambda c: c.convert(c.onnx, "--input-shape", "input:1x0x8x8"), "≥ 1"),
    Case("input-shape-bad-dtype", lambda c: c.convert(c.onnx, "--input-shape", "input:1x1x8x8:float99"), "dtype"),
    Case("input-shape-garbage", lambda c: c.convert(c.onnx, "--input-shape", "big"), "NAME:1x3x224x224"),
    Case("accuracy-drop-negative", lambda c: c.convert(c.onnx, "--max-accuracy-drop", "-1"), "impossible"),
    Case("agreement-above-one", lambda c: c.convert(c.onnx, "--min-top1-agreement", "5"), "impossible"),
    Case("latency-negative", lambda c: c.convert(c.onnx, "--max-latency-ms", "-5"), "impossible"),
    Case("cosine-above-one", lambda c: c.convert(c.onnx, "--min-cosine", "2"), "impossible"),
    Case("cosine-nan", lambda c: c.convert(c.onnx, "--min-cosine", "nan"), "impossible"),
    Case("precision-int4", lambda c: c.convert(c.onnx, "--precision", "int4"), "unknown precision"),
    Case("backend-tensorrt", lambda c: c.convert(c.onnx, "--backends", "tensorrt"), "unknown backend"),
    Case("target-unknown", lambda c: [*c.convert(c.onnx), "--target", "riscv"], "unknown target"),
    Case(
        "target-missing-key",
        lambda c: [*c.convert(c.onnx), "--target", str(_target(c, 'arch = "aarch64"\nbackends = ["tflite"]\n'))],
        "has no 'triple'",
    ),
    Case(
        "target-invalid-toml",
        lambda c: [*c.convert(c.onnx), "--target", str(_target(c, "arch = [\n"))],
        "not valid TOML",
    ),
    Case(
        "target-backends-not-a-list",
        lambda c: [
            *c.convert(c.onnx),
            "--target",
            str(_target(c, 'triple = "x"\narch = "x86_64"\nbackends = "onnxruntime"\n')),
        ],
        "must be a list of strings",
    ),
    Case("device-unknown", lambda c: c.convert(c.onnx, "--device", "toaster"), "unknown device"),
    Case(
        "ssh-host-is-an-option",
        lambda c: c.convert(c.onnx, "--device", f"ssh://pi@-oProxyCommand=touch {c.p('pwned.txt')}"),
        "not a plain name",
    ),
    Case("ssh-user-is-an-option", lambda c: c.convert(c.onnx, "--device", "ssh://-oX@host"), "not a plain name"),
    Case("prune-ratio-1.5", lambda c: c.cnn("--prune", "structured:1.5"), "not in (0, 1)"),
    Case("prune-garbage", lambda c: c.cnn("--prune", "half"), "not KIND:RATIO"),
    Case("prune-ignore-bad-regex", lambda c: c.cnn("--prune", "structured:0.3", "--prune-ignore", "(["), "regular"),
    Case("prune-onnx", lambda c: c.convert(c.onnx, "--prune", "structured:0.3"), "needs a PyTorch"),
    Case("calib-method-unknown", lambda c: c.convert(c.onnx, "--calib-method", "vibes"), "calibration method"),
    Case("quantizer-unknown", lambda c: c.convert(c.onnx, "--quantizer", "tensorrt"), "unknown quantizer"),
    Case("bias-correction-unknown", lambda c: c.convert(c.onnx, "--bias-correction", "half"), "bias correction"),
    Case("backend-option-garbage", lambda c: c.convert(c.onnx, "--backend-option", "x"), "BACKEND.KEY=VALUE"),
    Case("hls-config-missing", lambda c: c.convert(c.onnx, "--hls-config", c.p("no.json")), "does not exist"),
    Case("hls-config-not-json", lambda c: c.convert(c.onnx, "--hls-config", _write(c.p("h.json"), "{")), "JSON"),
    # --- the output folder ---
    Case("out-current-folder", lambda c: c.convert(c.onnx, out="."), "current folder"),
    Case("out-parent-of-current", lambda c: c.convert(c.onnx, out=".."), "current folder"),
    Case("out-root", lambda c: c.convert(c.onnx, out="/"), "root folder"),
    Case("out-home", lambda c: c.convert(c.onnx, out=Path.home()), "home folder"),
    Case("out-is-weights-folder", lambda c: c.cnn(out=c.weights.parent), "contains the input"),
    Case("out-is-calib-folder", lambda c: c.convert(c.onnx, "--calib", _images(c), out=c.p("photos")), "input"),
    Case("out-is-model-file", lambda c: c.convert(c.onnx, out=c.onnx), "contains the input"),
    Case("out-is-a-file", lambda c: c.convert(c.onnx, out=_write(c.p("notes.txt"), "keep me")), "existing file"),
    Case("out-foreign-folder", lambda c: c.convert(c.onnx, out=_foreign(c)), "did not write"),
    Case("out-parent-is-a-file", lambda c: c.convert(c.onnx, out=_file_parent(c)), "is a file"),
    Case("out-symlink", lambda c: c.convert(c.onnx, out=_symlink(c)), "symbolic link"),
    # --- profile and diff ---
    Case("profile-not-a-build", lambda c: ["profile", str(c.root), "--inputs", str(_samples(c))], "not an edgekit"),
    Case(
        "profile-damaged-manifest",
        lambda c: ["profile", str(_damaged_build(c, "{nope")), "--inputs", str(_samples(c))],
        "damaged",
    ),
    Case(
        "profile-manifest-without-inputs",
        lambda c: ["profile", str(_damaged_build(c, '{"backend": "tflite"}')), "--inputs", str(_samples(c))],
        "damaged",
    ),
    Case(
        "profile-wrong-shape",
        lambda c: ["profile", str(_build(c)), "--inputs", str(_data(c, "ws.npz", input=np.zeros((2, 1, 9, 9))))],
        "sample shape",
    ),
    Case(
        "profile-nan-inputs",
        lambda c: ["profile", str(_build(c)), "--inputs", str(_data(c, "nan.npz", input=_nan(c)))],
        "NaN/inf",
    ),
    Case(
        "profile-threads-0",
        lambda c: ["profile", str(_build(c)), "--inputs", str(_samples(c)), "--threads", "0"],
        "--threads 0",
    ),
    Case(
        "profile-out-missing-folder",
        lambda c: ["profile", str(_build(c)), "--inputs", str(_samples(c)), "--out", str(c.p("no/p.json"))],
        "does not exist",
    ),
    Case(
        "diff-damaged-original",
        lambda c: ["diff", str(_write(c.p("orig.onnx"), "junk")), str(_build(c)), "--inputs", str(_samples(c))],
        "not a valid ONNX",
    ),
    Case(
        "diff-damaged-manifest",
        lambda c: ["diff", str(c.onnx), str(_damaged_build(c, "[]")), "--inputs", str(_samples(c))],
        "damaged",
    ),
    Case(
        "diff-wrong-shape",
        lambda c: ["diff", str(c.onnx), str(_build(c)), "--inputs", str(_data(c, "w.npz", input=np.zeros((1, 3))))],
        "sample shape",
    ),
    Case(
        "diff-arrays-not-named",
        lambda c: ["diff", str(c.onnx), str(_build(c)), "--inputs", str(_data(c, "nn.npz", a=_x(c), b=_x(c)))],
        "needs inputs",
    ),
    Case(
        "diff-plot-missing-folder",
        lambda c: ["diff", str(c.onnx), str(_build(c)), "--inputs", str(_samples(c)), "--plot", "nowhere/p.png"],
        "does not exist",
    ),
    Case(
        "diff-out-is-a-folder",
        lambda c: ["diff", str(c.onnx), str(_build(c)), "--inputs", str(_samples(c)), "--out", str(c.root)],
        "is a folder",
    ),
    Case(
        "diff-sample-out-of-range",
        lambda c: ["diff", str(c.onnx), str(_build(c)), "--inputs", str(_samples(c)), "--sample", "99"],
        "no sample 99",
    ),
    # --- prune-scan ---
    Case(
        "scan-onnx",
        lambda c: ["prune-scan", str(c.onnx), "--calib", str(c.calib), "--out", "out"],
        "needs a PyTorch",
    ),
    Case(
        "scan-ratios-garbage",
        lambda c: ["prune-scan", CNN, "--weights", str(c.weights), "--calib", str(c.calib), "--ratios", "a,b"],
        "--ratios",
    ),
    Case(
        "scan-ratio-above-one",
        lambda c: ["prune-scan", CNN, "--weights", str(c.weights), "--calib", str(c.calib), "--ratios", "1.5"],
        "fractions in (0, 1)",
    ),
    Case(
        "scan-out-current-folder",
        lambda c: ["prune-scan", CNN, "--weights", str(c.weights), "--calib", str(c.calib), "--out", "."],
        "current folder",
    ),
]


def _truncate(src: Path, dest: Path) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


def _save(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: kind, size, content hash (files), link target (symlinks)."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir",)
            elif path.is_file():
                found[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                found[rel] = ("special",)
    return found


@pytest.fixture(scope="module")
def corpus_build(tmp_path_factory, cnn_case) -> tuple[Path, Path]:
    """One real host conversion (ONNX Runtime fp32) of the digits CNN, for the diff/profile cases."""
    root = tmp_path_factory.mktemp("corpus_build")
    onnx_path = root / "cnn.onnx"
    torch.onnx.export(
        cnn_case["model"], (torch.zeros(1, 1, 8, 8),), str(onnx_path), input_names=["input"], dynamo=False
    )
    out = root / "build"
    convert(
        ConvertOptions(
            model=str(onnx_path),
            target="host",
            calib=cnn_case["calib"],
            out=out,
            backends=("onnxruntime",),
            precisions=("fp32",),
            runs=2,
            warmup=0,
        )
    )
    return onnx_path, out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, tmp_path_factory, monkeypatch, cnn_case, digits, corpus_build):
    root = tmp_path / "work"
    root.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    # Importing Keras writes ~/.keras/keras.json and matplotlib's font cache: tool settings, not user files.
    monkeypatch.setenv("MPLCONFIGDIR", str(tmp_path_factory.mktemp("mplconfig")))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("keras_home")))
    monkeypatch.chdir(root)
    x, y = digits
    onnx_src, build = corpus_build
    inputs = root / "inputs"
    inputs.mkdir()
    ctx = Ctx(
        root=root,
        onnx=_copy(onnx_src, inputs / "cnn.onnx"),
        weights=_copy(cnn_case["weights"], inputs / "cnn.pt"),
        calib=_copy(cnn_case["calib"], inputs / "calib.npz"),
        eval=_copy(cnn_case["eval"], inputs / "eval.npz"),
        build=build,
        digits=x,
        labels=y,
    )
    older = root / "out"  # an earlier edgekit output that must survive every failed run
    older.mkdir()
    (older / MARKER).write_text("")
    (older / "report.json").write_text('{"earlier": true}')
    argv = case.argv(ctx)
    before = _snapshot(tmp_path)
    build_before = _snapshot(build)
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}

    result = runner.invoke(app, argv)

    assert result.exit_code == 2, (result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and " — fix: " in errors[0], result.output
    assert case.expect in errors[0], errors[0]
    assert _snapshot(tmp_path) == before, "a file or folder changed or appeared"
    assert _snapshot(build) == build_before
    assert (older / "report.json").read_text() == '{"earlier": true}'
    left = {p.pid for p in psutil.Process().children(recursive=True)} - children_before
    assert not left, f"processes left behind: {left}"
    assert not (root / "pwned.txt").exists(), "the model file ran code"


def _copy(src: Path, dest: Path) -> Path:
    dest.write_bytes(Path(src).read_bytes())
    return dest


def test_the_corpus_is_large_and_its_payloads_are_real(tmp_path):
    """≥ 60 cases; the pickled-weight archive really runs its payload under plain ``torch.export.load``."""
    from edgekit.models.small_cnn import SmallCNN

    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    marker = tmp_path / "pwned.txt"
    evil = bad.pickled_weight_archive(
        bad.export_archive(SmallCNN().eval(), tmp_path / "c.pt2"), tmp_path / "e.pt2", marker
    )
    with pytest.raises(Exception):  # noqa: B017 — torch rejects the object only after unpickling it
        torch.export.load(str(evil))
    assert marker.exists()


def test_trusted_torchscript_and_clean_export_archives_load(tmp_path):
    """The refusals are specific: a clean .pt2 loads as is, TorchScript with --trust-model."""
    from edgekit.models.small_cnn import SmallCNN
    from edgekit.source import load_model

    model = SmallCNN().eval()
    assert load_model(str(bad.export_archive(model, tmp_path / "c.pt2"))).framework == "torch.export"
    ts = tmp_path / "m.ts"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 1, 8, 8)), str(ts))
    assert load_model(str(ts), trust=True).framework == "torchscript"


def test_a_stale_staging_folder_is_removed_by_the_next_run(tmp_path, cnn_case):
    """A run killed with SIGKILL leaves its staging folder; the next run into the same place removes it."""
    from edgekit.safety import MARKER, STAGING_MARK, Staging

    stale = tmp_path / ".out.edgekit-999999999-abc123"  # no such pid
    stale.mkdir()
    (stale / STAGING_MARK).touch()
    (stale / "half.onnx").write_text("x")
    replaced = tmp_path / ".out.old-999999999"  # an earlier output moved aside by a killed publish
    replaced.mkdir()
    (replaced / MARKER).touch()
    live = tmp_path / f".out.edgekit-{os.getppid()}-abc123"  # a running process: left alone
    live.mkdir()
    (live / STAGING_MARK).touch()
    backup = tmp_path / ".out.old-2024"  # the user's own backup that merely looks like ours: never touched
    backup.mkdir()
    (backup / "thesis.txt").write_text("years of work")

    with Staging(tmp_path / "out") as staging:
        assert staging.root.name.startswith(f".out.edgekit-{os.getpid()}-")
    assert not stale.exists() and not replaced.exists() and live.exists()
    assert (backup / "thesis.txt").read_text() == "years of work"


def test_files_put_into_out_during_the_run_are_never_replaced(tmp_path):
    """--out was free when the run started; the user filled it meanwhile: publishing refuses, their file stays."""
    from edgekit.errors import EdgekitError
    from edgekit.safety import Staging

    out = tmp_path / "out"
    with Staging(out) as staging:
        staged = staging.root / "out"
        staged.mkdir()
        out.mkdir()
        (out / "mine.txt").write_text("keep")
        with pytest.raises(EdgekitError, match="did not write"):
            staging.publish(staged)
    assert (out / "mine.txt").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
