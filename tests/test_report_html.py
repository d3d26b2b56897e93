"""report.html: self-contained, with plots, rendered by headless Chromium (Debian's package) in a screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from edgekit import convert
from edgekit.html_report import COLOURS
from tests.conftest import cnn_options


@pytest.fixture(scope="module")
def converted(tmp_path_factory, cnn_case) -> dict:
    """A host conversion with two backends at fp32 and int8, and the per-layer diff of the int8 builds."""
    out = tmp_path_factory.mktemp("html") / "out"
    opts = cnn_options(cnn_case, target="host", backends=("onnxruntime", "openvino"), precisions=("fp32", "int8"))
    report = convert(replace(opts, eval=cnn_case["eval"], out=out, runs=20, warmup=2, layer_diff=True))
    return {"out": out, "report": report}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.figures, self.svgs, self.external = [], 0, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "figure":
            self.figures.append(attrs.get("id"))
        self.svgs += tag == "svg"
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("#") and not attrs[key].endswith(".md"):
                self.external.append(attrs[key])


def test_the_report_page_is_self_contained_and_has_every_plot(converted):
    report = converted["report"]
    assert set(report["layer_diff"]) == {"onnxruntime_int8", "openvino_int8"}
    assert all(d["rows"] for d in report["layer_diff"].values())
    page = (converted["out"] / "report.html").read_text()
    parser = _Page()
    parser.feed(page)
    assert parser.figures == ["plot-accuracy-latency", "plot-latency", "plot-size", "plot-layers"]
    assert parser.svgs >= 4 and parser.external == []  # nothing fetched: no scripts, images or fonts
    assert "<script" not in page and "@import" not in page
    for row in report["builds"]:  # the report's text is there too
        assert f"<strong>{row['backend']} {row['precision']}</strong>" in page
    assert re.search(r"<table>.*onnxruntime.*</table>", page, re.S)
    assert "Per-layer error" in (converted["out"] / "report.md").read_text()


def test_headless_chromium_renders_the_plots(converted, tmp_path):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is installed by .ci/setup"
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2200",
         f"--screenshot={shot}", (converted["out"] / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file(), proc.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[:2] == (2200, 1280)

    def count(colour: str, region=slice(None)) -> int:
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels[region] - rgb).sum(axis=2) < 30).sum())

    # The plots draw every backend and the original in their own colour (the page's text and tables use none):
    # size bars, latency boxes, accuracy points and per-layer lines. A page whose SVGs did not render has none.
    for name in ("original", "onnxruntime", "openvino"):
        assert count(COLOURS[name]) > 2000, name
    # Both plot rows are drawn: the upper (accuracy/latency) and the lower (size/per-layer) half of the grid.
    top, bottom = slice(0, 700), slice(700, 1500)
    assert count(COLOURS["onnxruntime"], top) > 300 and count(COLOURS["onnxruntime"], bottom) > 300
    assert count(COLOURS["tflite"]) < 50  # no TFLite build, no TFLite colour: the counts mean what they say
