"""The conversion cache: an unchanged re-run reuses its builds (and only re-checks them), any change misses."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit import convert
from edgekit.cache import META, BuildCache
from edgekit.cli import app
from tests.conftest import N_TRAIN, cnn_options


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_BUILD_CACHE", str(root))
    return root


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # about 45 s: two full conversions (keeps the default suite under 15 min)
def test_an_unchanged_rerun_reuses_every_build_and_rechecks_it(cnn_case, digits, tmp_path, cache_root):
    # TFLite first: onnx2tf rewrites its input file, and must not touch the graph the others are built from.
    opts = cnn_options(cnn_case, target="host", backends=("tflite", "onnxruntime"), precisions=("int8",))
    opts = replace(opts, eval=cnn_case["eval"], runs=5, warmup=1)
    first = convert(replace(opts, out=tmp_path / "a"))
    assert [b["status"] for b in first["builds"]] == ["ok", "ok"]
    assert not any(b.get("cache") for b in first["builds"])
    messages: list[str] = []
    again = convert(replace(opts, out=tmp_path / "b"), messages.append)
    assert "ONNX export reused from the cache (checked against the original)" in messages
    assert [b["cache"]["reused"] for b in again["builds"]] == [True, True]
    assert all(b["cache"]["measured_at"] for b in again["builds"])  # same device, data, settings: same numbers
    assert again["settings"]["cache"] == str(cache_root)
    for old, new in zip(first["builds"], again["builds"], strict=True):
        assert new["status"] == "ok" and new["latency_ms"] == old["latency_ms"]
        name = f"{new['backend']}_int8"
        assert _files(tmp_path / "b" / name) == _files(tmp_path / "a" / name)
    assert "measurement reused from the cache" in (tmp_path / "b" / "report.md").read_text()

    # --recheck: the reused builds run on the device again.
    rechecked = convert(replace(opts, out=tmp_path / "r", recheck=True))
    for old, new in zip(first["builds"], rechecked["builds"], strict=True):
        assert new["cache"] == {"reused": True, "first_build_s": old["build_s"]}
        assert new["latency_ms"]["n"] == 5 and new["latency_ms"] != old["latency_ms"]
        assert new["accuracy"]["top1_agreement"] == old["accuracy"]["top1_agreement"]
    for graph in ("model.onnx", "model_int8_qdq.onnx"):
        assert (tmp_path / "a" / "onnx" / graph).read_bytes() == (tmp_path / "b" / "onnx" / graph).read_bytes()

    # Other calibration data: the int8 graph and both int8 builds are made again.
    x, _ = digits
    np.savez(tmp_path / "calib2.npz", input=x[200:N_TRAIN][::-1])
    other = convert(replace(opts, out=tmp_path / "c", calib=tmp_path / "calib2.npz"))
    assert not any(b.get("cache") for b in other["builds"])

    # --no-cache: nothing reused, nothing stored.
    stored = len(BuildCache(cache_root).entries())
    off = convert(replace(opts, out=tmp_path / "d", cache=False))
    assert not any(b.get("cache") for b in off["builds"]) and off["settings"]["cache"] == "off"
    assert len(BuildCache(cache_root).entries()) == stored


def test_other_weights_miss_and_a_cached_export_that_no_longer_matches_is_redone(cnn_case, tmp_path, cache_root):
    opts = cnn_options(cnn_case, target="host", backends=("onnxruntime",), precisions=("fp32",), runs=3, warmup=1)
    convert(replace(opts, out=tmp_path / "a"))
    state = torch.load(cnn_case["weights"], weights_only=True)
    first = next(iter(state))
    state[first] = state[first] * 1.5
    torch.save(state, tmp_path / "w2.pt")
    messages: list[str] = []
    other = convert(replace(opts, out=tmp_path / "b", weights=tmp_path / "w2.pt"), messages.append)
    assert not any("reused" in m for m in messages) and not other["builds"][0].get("cache")

    # A cache entry whose graph does not compute what the model computes (here: the other weights' graph
    # planted under this model's key) fails the check against the original and is exported again.
    export = next(
        e for e, _, _ in BuildCache(cache_root).entries() if _kind(e) == "export" and _uses(e, tmp_path / "a")
    )
    shutil.copyfile(tmp_path / "b" / "onnx" / "model.onnx", export / "files" / "model.onnx")
    messages.clear()
    again = convert(replace(opts, out=tmp_path / "c"), messages.append)
    assert not any("export reused" in m for m in messages)
    assert (tmp_path / "c" / "onnx" / "model.onnx").read_bytes() == (
        tmp_path / "a" / "onnx" / "model.onnx"
    ).read_bytes()
    assert again["builds"][0]["cache"]["reused"]  # the same graph again: its build is still good


def _kind(entry) -> str:
    return json.loads((entry / META).read_text()).get("kind", "")


def _uses(entry, out) -> bool:
    return (entry / "files" / "model.onnx").read_bytes() == (out / "onnx" / "model.onnx").read_bytes()


def test_a_damaged_entry_is_a_miss_and_the_build_is_made_again(cnn_case, tmp_path, cache_root):
    opts = cnn_options(cnn_case, target="host", backends=("onnxruntime",), precisions=("fp32",), runs=3, warmup=1)
    convert(replace(opts, out=tmp_path / "a"))
    entries = BuildCache(cache_root).entries()
    assert entries
    for entry, _, _ in entries:
        shutil.rmtree(entry / "files")
    again = convert(replace(opts, out=tmp_path / "b"))
    assert again["builds"][0]["status"] == "ok" and not again["builds"][0].get("cache")  # built and measured


def test_least_recently_used_entries_go_beyond_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKIT_BUILD_CACHE_GB", str(2.5e-6))  # 2500 bytes
    store = BuildCache(tmp_path / "c")
    for i in range(4):
        (tmp_path / f"f{i}").write_bytes(bytes(1000))
        store.put(f"k{i}", tmp_path / f"f{i}", {"i": i})
    kept = sorted(e[0].name for e in store.entries())
    assert kept == ["k2", "k3"]
    assert json.loads((tmp_path / "c" / "k3" / META).read_text())["i"] == 3
    assert store.get("k0", tmp_path / "miss") is None and not (tmp_path / "miss").exists()
    assert store.get("k3", tmp_path / "hit") == json.loads((tmp_path / "c" / "k3" / META).read_text())
    assert (tmp_path / "hit" / "f3").read_bytes() == bytes(1000)


def test_cache_info_and_clear(tmp_path, cache_root, monkeypatch):
    store = BuildCache(cache_root)
    (tmp_path / "f").write_bytes(bytes(10))
    store.put("one", tmp_path / "f", {})
    store.put("two", None, {})
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info"])
    assert info.exit_code == 0 and "2 entries" in info.output
    for own in ("photos", ".tmp-mine"):  # a user's folders where the cache was pointed: never edgekit's to remove
        (cache_root / own).mkdir()
        (cache_root / own / META).write_text("{}")
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0 and "removed 2 cached build(s)" in cleared.output
    assert BuildCache(cache_root).entries() == []
    assert sorted(p.name for p in cache_root.iterdir()) == [".tmp-mine", "photos"]
    monkeypatch.setenv("EDGEKIT_BUILD_CACHE", "off")
    assert "off" in runner.invoke(app, ["cache", "info"]).output
