"""Units: data loading, accuracy metrics, latency statistics and target files."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from edgekit.data import ImagePreprocess, TensorSpec, load_dataset
from edgekit.errors import EdgekitError
from edgekit.metrics import compare, latency_stats
from edgekit.target import list_targets, load_target

PHOTOS = Path(str(resources.files("edgekit.calib_data") / "photos"))


def test_npz_single_array_takes_the_input_name(tmp_path):
    np.savez(tmp_path / "d.npz", whatever=np.ones((4, 1, 8, 8), np.float32), labels=np.arange(4))
    ds = load_dataset(tmp_path / "d.npz", [TensorSpec("x", (1, 1, 8, 8), "float32")])
    assert list(ds.inputs) == ["x"] and len(ds) == 4 and ds.labels.tolist() == [0, 1, 2, 3]


def test_npz_names_must_match_a_multi_input_model(tmp_path):
    np.savez(tmp_path / "d.npz", a=np.ones((2, 3)), b=np.ones((2, 3)))
    specs = [TensorSpec("ids", (1, 3), "int64"), TensorSpec("mask", (1, 3), "int64")]
    with pytest.raises(EdgekitError, match="needs inputs"):
        load_dataset(tmp_path / "d.npz", specs)


def test_wrong_sample_shape_is_named(tmp_path):
    np.save(tmp_path / "d.npy", np.ones((3, 1, 9, 9), np.float32))
    with pytest.raises(EdgekitError, match=r"sample shape \(1, 9, 9\).*expects \(1, 8, 8\)"):
        load_dataset(tmp_path / "d.npy", [TensorSpec("x", (1, 1, 8, 8), "float32")])


def test_corrupt_npz_is_reported(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(EdgekitError, match="cannot be read"):
        load_dataset(tmp_path / "d.npz", None)


def test_image_folder_ten_crops_real_photos():
    spec = TensorSpec("image", (1, 3, 224, 224), "float32")
    ds = load_dataset(PHOTOS, [spec], ImagePreprocess((127.0,) * 3, (128.0,) * 3, ten_crop=True))
    n_photos = len(list(PHOTOS.glob("*.jpg")))
    x = ds.inputs["image"]
    assert x.shape == (10 * n_photos, 3, 224, 224)
    assert -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0
    np.testing.assert_allclose(x[5], x[0][:, :, ::-1])  # sixth crop mirrors the centre crop


def test_empty_image_folder(tmp_path):
    with pytest.raises(EdgekitError, match="contains no images"):
        load_dataset(tmp_path, [TensorSpec("image", (1, 3, 8, 8), "float32")])


def test_compare_metrics():
    ref = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    out = np.array([[1.0, 0.1, 0.0], [0.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    acc = compare([ref], [out], labels=np.array([0, 1, 1]))
    assert acc["max_abs"] == pytest.approx(3.0)
    assert acc["cosine_min"] == pytest.approx(0.0)
    assert acc["top1_agreement"] == pytest.approx(2 / 3)
    assert acc["task_metric"] == {
        "name": "top1_accuracy",
        "original": pytest.approx(2 / 3),
        "build": pytest.approx(2 / 3),
    }
    with pytest.raises(ValueError, match="shape"):
        compare([ref], [out[:, :2]])


def test_agreement_where_the_original_is_confident_and_top5_containment():
    # logits over 8 classes: sample 0 confident (softmax ≈ 0.98), samples 1-2 near-ties (≈ 0.2)
    ref = np.zeros((3, 8))
    ref[0, 2], ref[1, 4], ref[2, 5] = 6.0, 0.3, 0.3
    out = ref.copy()
    out[1, 6] = 0.5  # a near-tie flips: plain agreement drops, confident agreement does not
    out[2, 5], out[2, :5] = -1.0, 1.0  # the original's class falls out of the build's top 5
    acc = compare([ref], [out])
    assert acc["top1_agreement"] == pytest.approx(1 / 3)
    assert acc["confident"] == {"threshold": 0.5, "samples": 1, "top1_agreement": 1.0}
    assert acc["top5_contains_top1"] == pytest.approx(2 / 3)
    probabilities = np.full((2, 4), 0.25)  # an output that already is probabilities is taken as is
    assert compare([probabilities], [probabilities])["confident"]["samples"] == 0
    assert "top5_contains_top1" not in compare([probabilities], [probabilities])  # ≤ 5 classes: meaningless


def test_latency_stats():
    stats = latency_stats(list(range(1, 101)))
    assert stats["p50"] == pytest.approx(50.5) and stats["p90"] == pytest.approx(90.1) and stats["n"] == 100


def test_targets_are_declarative():
    names = [t.name for t in list_targets()]
    assert {"arm64", "host"} <= set(names)
    arm = load_target("arm64")
    assert arm.tvm_target() == {
        "kind": "llvm",
        "mtriple": "aarch64-linux-gnu",
        "mcpu": "cortex-a76",
        "mattr": ["+neon"],
    }
    assert arm.default_precisions == ("int8",) and "tvm" in arm.backends
    assert load_target("android-arm64").default_precisions == ("int8", "fp16")


def test_unknown_target(tmp_path):
    with pytest.raises(EdgekitError, match="unknown target 'riscv'"):
        load_target("riscv")
    bad = tmp_path / "t.toml"
    bad.write_text("name = ")
    with pytest.raises(EdgekitError, match="not valid TOML"):
        load_target(str(bad))


def test_merged_usr_links_keep_what_packages_unpacked_in_lib(tmp_path):
    from edgekit.emulator import ARMHF_ORT, ARMHF_TFLITE, _merge_usr

    assert ARMHF_ORT.merged_usr and not ARMHF_TFLITE.merged_usr  # only trixie is merged-/usr
    (tmp_path / "lib/arm-linux-gnueabihf").mkdir(parents=True)
    (tmp_path / "lib/arm-linux-gnueabihf/libold.so.1").write_text("old")
    (tmp_path / "usr/lib/arm-linux-gnueabihf").mkdir(parents=True)
    (tmp_path / "usr/lib/arm-linux-gnueabihf/libnew.so.1").write_text("new")
    _merge_usr(tmp_path)
    for name in ("bin", "lib", "sbin"):
        assert (tmp_path / name).is_symlink() and str((tmp_path / name).readlink()) == f"usr/{name}"
    assert sorted(p.name for p in (tmp_path / "lib/arm-linux-gnueabihf").iterdir()) == ["libnew.so.1", "libold.so.1"]


def test_a_nan_metric_fails_its_row_and_every_budget():
    from edgekit.metrics import finite_metrics
    from edgekit.pipeline import Budgets, _check_budgets

    reference = [np.eye(4, dtype=np.float32)]
    produced = [np.eye(4, dtype=np.float32)]
    produced[0][1, 1] = np.nan
    acc = compare(reference, produced)
    assert acc["non_finite_outputs"] == 1 and not finite_metrics(acc)
    assert finite_metrics(compare(reference, reference))
    row = {"accuracy": {"cosine": float("nan"), "top1_agreement": float("nan")}, "latency_ms": {"p50": float("nan")}}
    budgets = Budgets(min_top1_agreement=0.5, min_cosine=0.9, max_accuracy_drop=1.0, max_latency_ms=10.0)
    verdict = _check_budgets(row, budgets)
    assert not verdict["passed"] and len(verdict["violations"]) == 4
