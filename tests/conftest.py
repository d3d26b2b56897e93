"""Shared fixtures: a small CNN trained on real labelled digits, and its data as edgekit inputs."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit import ConvertOptions
from edgekit.models.small_cnn import train_small_cnn
from edgekit.onnx_hub import QuantConfig

N_TRAIN = 1300
# Every test builds for real; the conversion cache is tested on its own (tests/test_cache.py).
os.environ["EDGEKIT_BUILD_CACHE"] = "off"


@pytest.fixture(scope="session")
def digits() -> tuple[np.ndarray, np.ndarray]:
    with np.load(Path(str(resources.files("edgekit.calib_data") / "digits" / "digits.npz"))) as npz:
        return npz["input"], npz["labels"]


@pytest.fixture(scope="session")
def cnn_case(tmp_path_factory, digits) -> dict:
    """A SmallCNN trained on the first 1300 digits, its state dict, calibration and labelled held-out data."""
    x, y = digits
    root = tmp_path_factory.mktemp("cnn")
    model = train_small_cnn(torch.from_numpy(x[:N_TRAIN]), torch.from_numpy(y[:N_TRAIN]), epochs=12)
    weights = root / "cnn.pt"
    torch.save(model.state_dict(), weights)
    np.savez(root / "calib.npz", input=x[:N_TRAIN])
    np.savez(root / "eval.npz", input=x[N_TRAIN:], labels=y[N_TRAIN:])
    with torch.inference_mode():
        accuracy = float((model(torch.from_numpy(x[N_TRAIN:])).argmax(1).numpy() == y[N_TRAIN:]).mean())
    return {
        "root": root,
        "model": model,
        "weights": weights,
        "calib": root / "calib.npz",
        "eval": root / "eval.npz",
        "accuracy": accuracy,
    }


def cnn_options(cnn_case: dict, **overrides) -> ConvertOptions:
    """ConvertOptions for the trained digits CNN with its calibration data and min/max ranges; keywords
    override."""
    return ConvertOptions(
        **{
            "model": "edgekit.models.small_cnn:SmallCNN",
            "weights": cnn_case["weights"],
            "calib": cnn_case["calib"],
            # one range estimator: half the NNCF runs (auto is tested in test_int8_quantizers and the demo tests)
            "quant": QuantConfig(method="minmax"),
            **overrides,
        }
    )
