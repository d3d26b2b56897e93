"""Progress (an overall bar whose steps add up, per-sample counts) and the libraries' output kept out of sight."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import replace

from edgekit import convert
from edgekit.progress import Progress
from tests.conftest import cnn_options


class Recorder(Progress):
    def __init__(self) -> None:
        super().__init__()
        self.planned = self.finished = 0.0
        self.steps: dict[str, tuple[int | None, int]] = {}

    def plan(self, weight: float) -> None:
        self.planned += weight

    def done(self, weight: float) -> None:
        self.finished += weight

    @contextlib.contextmanager
    def step(self, description, weight=1.0, total=None):
        counted = [0]

        def advance(n=1):
            counted[0] += n

        try:
            yield advance
        finally:
            self.steps[description] = (total, counted[0])
            self.finished += weight


def test_the_overall_bar_ends_exactly_at_its_total_and_counts_samples(cnn_case, tmp_path):
    opts = cnn_options(cnn_case, target="host", backends=("onnxruntime",), precisions=("fp32", "int8"))
    budgets = replace(opts.budgets, max_accuracy_drop=5.0)
    progress = Recorder()
    convert(replace(opts, out=tmp_path / "o", runs=7, warmup=2, budgets=budgets, layer_diff=True), progress)
    assert progress.planned > 0 and progress.finished == progress.planned
    measuring = progress.steps["measuring the original model"]
    assert measuring == (100 + 2 + 7, 100 + 2 + 7)  # held-out samples, warm-up and timed runs, each counted
    calibration = next(v for k, v in progress.steps.items() if k.startswith("quantizing to int8"))
    assert calibration == (100, 100)  # ONNX Runtime's calibration read every sample through edgekit's reader
    for name in ("building onnxruntime int8", "checking onnxruntime fp32 on host x86_64", "accuracy fallback"):
        assert any(k.startswith(name) for k in progress.steps), name


def _convert(tmp_path, cnn_case, *extra: str) -> subprocess.CompletedProcess:
    args = [
        *("edgekit", "convert", "edgekit.models.small_cnn:SmallCNN", "--weights", str(cnn_case["weights"])),
        *("--calib", str(cnn_case["calib"]), "--target", "host", "--backends", "onnxruntime"),
        *("--precision", "fp32", "--runs", "3", *extra),
    ]
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=os.environ)


def test_library_warnings_are_kept_in_the_logs_and_shown_only_with_verbose(cnn_case, tmp_path):
    quiet = _convert(tmp_path, cnn_case, "--out", str(tmp_path / "a"))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    kept = (tmp_path / "a" / "logs" / "libraries.log").read_text()
    assert "torchvision is not installed" in kept  # torch's ONNX exporter says so for every torchvision op
    assert kept.count("torchvision::") >= 4  # one line per operator …
    assert (quiet.stderr + quiet.stdout).count("torchvision::") == 1  # … summarised once on the terminal
    assert "line(s) of library output hidden" in quiet.stderr and "--verbose" in quiet.stderr
    assert (tmp_path / "a" / "logs" / "onnxruntime_fp32.log").is_file()  # the converter's own output
    assert len(quiet.stderr.splitlines()) < 40  # progress lines, not a redrawn bar per frame, in a CI log

    verbose = _convert(tmp_path, cnn_case, "--out", str(tmp_path / "b"), "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert verbose.stderr.count("torchvision::") >= 4
    assert "hidden" not in verbose.stderr
