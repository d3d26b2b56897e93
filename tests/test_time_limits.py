"""A slow build never holds the run hostage: past its time limit its row fails with the reason, the rest of
the report is written; the default limit is sized from the original's latency."""

from __future__ import annotations

from dataclasses import replace

import pytest

from edgekit import convert
from edgekit.pipeline import CHECK_SLOWDOWN, EMULATION_SLOWDOWN, MIN_CHECK_S, check_time_limit
from edgekit.report import exit_code
from tests.conftest import cnn_options
from tests.test_backend_plugin import BUILD

SLEEPY_SPEC = """
from edgekit.converters.base import BackendSpec

SPEC = BackendSpec(name="sleepy", summary="ONNX Runtime, one second per inference", precisions=("fp32",),
                   converter="build:BasicOrt", runtime_modules=("onnxruntime",), runtime_package="onnxruntime")
"""
SLEEPY_RUNTIME = """
import time


def load(build_dir, manifest, threads):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(build_dir / manifest["artifacts"]["model"]), providers=["CPUExecutionProvider"])

    def run(feed):
        time.sleep(1.0)
        return sess.run(None, feed)

    return run, "onnxruntime (sleepy)"
"""


def test_the_default_limit_is_sized_from_the_original():
    assert check_time_limit(0.1, 160, emulated=False) == MIN_CHECK_S  # a tiny model: the floor
    assert check_time_limit(300.0, 126, emulated=False) == pytest.approx(CHECK_SLOWDOWN * 0.3 * 126)
    assert check_time_limit(300.0, 126, emulated=True) == pytest.approx(CHECK_SLOWDOWN * 0.3 * 126 * EMULATION_SLOWDOWN)


def test_a_build_past_its_limit_fails_alone_and_the_report_is_written(tmp_path, cnn_case, monkeypatch):
    folder = tmp_path / "plugins" / "sleepy"
    folder.mkdir(parents=True)
    for name, text in (("__init__.py", SLEEPY_SPEC), ("build.py", BUILD), ("runtime.py", SLEEPY_RUNTIME)):
        (folder / name).write_text(text)
    monkeypatch.setenv("EDGEKIT_BACKENDS", str(folder))
    out = tmp_path / "o"
    opts = cnn_options(cnn_case, target="host", backends=("sleepy", "onnxruntime"), precisions=("fp32",), out=out)
    report = convert(replace(opts, timeout_s=6.0, runs=3, warmup=0))
    rows = {b["backend"]: b for b in report["builds"]}
    assert rows["onnxruntime"]["status"] == "ok"
    sleepy = rows["sleepy"]
    assert sleepy["status"] == "failed" and "ran past its time limit of 6 s (--timeout)" in sleepy["reason"]
    assert (out / "report.md").is_file() and exit_code(report) == 1
