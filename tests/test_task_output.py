"""--task-output: the output that carries classes drives top-1, labels and budgets; a (samples, steps,
classes) output gets per-step agreement; a name that is not an output is one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit import Budgets, ConvertOptions, convert
from edgekit.cli import app
from edgekit.errors import EdgekitError

HEADS = """
import torch


class Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 48), torch.nn.ReLU())
        self.boxes = torch.nn.Linear(48, 4)
        self.classes = torch.nn.Linear(48, 10)
        self.steps = torch.nn.Linear(48, 6 * 10)

    def forward(self, x):
        h = self.body(x)
        return self.boxes(h), self.classes(h), self.steps(h).reshape(-1, 6, 10)


def build():
    return Heads()
"""


@pytest.fixture(scope="module")
def heads(tmp_path_factory, digits) -> dict:
    """A box head first (4 outputs: looks like a 4-class classifier), then the class head, then a per-step head."""
    x, y = digits
    root = tmp_path_factory.mktemp("heads")
    (root / "heads.py").write_text(HEADS)
    namespace: dict = {}
    exec(HEADS, namespace)
    model = namespace["build"]()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x[:1300]), torch.from_numpy(y[:1300])
    for _ in range(150):
        optimizer.zero_grad()
        _, classes, steps = model(xt)
        loss = torch.nn.functional.cross_entropy(classes, yt)
        loss = loss + torch.nn.functional.cross_entropy(steps.reshape(-1, 10), yt.repeat_interleave(6))
        loss.backward()
        optimizer.step()
    torch.save(model.state_dict(), root / "heads.pt")
    np.savez(root / "calib.npz", input=x[:300])
    np.savez(root / "eval.npz", input=x[1300:], labels=y[1300:])
    np.savez(root / "eval_unlabelled.npz", input=x[1300:])
    return {"root": root, "model": f"{root / 'heads.py'}:build", "weights": root / "heads.pt"}


def _options(heads: dict, out: Path, **overrides) -> ConvertOptions:
    settings = {"target": "host", "backends": ("onnxruntime",), "precisions": ("fp32", "int8"), "runs": 2}
    return ConvertOptions(
        model=heads["model"],
        weights=heads["weights"],
        calib=heads["root"] / "calib.npz",
        out=out,
        **{**settings, "warmup": 0, **overrides},
    )


def test_the_named_class_output_carries_labels_and_agreement(heads, tmp_path):
    with pytest.raises(EdgekitError, match="--task-output"):  # output 0 (boxes) cannot carry 10 labels
        convert(_options(heads, tmp_path / "a", eval=heads["root"] / "eval.npz"))
    assert not (tmp_path / "a").exists()
    budget = Budgets(max_accuracy_drop=2.0)  # the accuracy fallback scores the named class output too
    report = convert(_options(heads, tmp_path / "b", eval=heads["root"] / "eval.npz", task_output="1", budgets=budget))
    assert report["original"]["task_metric"]["value"] > 0.85  # the class head's accuracy, not the box head's
    assert report["accuracy_fallback"]["met_on_calibration"] and report["accuracy_fallback"]["agreement_before"] > 0.9
    for row in report["builds"]:
        acc = row["accuracy"]
        assert acc["task_output"] == 1 and acc["task_metric"]["build"] > 0.8 and acc["top1_agreement"] > 0.9


def test_a_sequence_output_gets_per_step_agreement(heads, tmp_path):
    first = convert(_options(heads, tmp_path / "a", eval=heads["root"] / "eval_unlabelled.npz", precisions=("fp32",)))
    steps = first["model"]["outputs"][2]["name"]
    report = convert(_options(heads, tmp_path / "b", eval=heads["root"] / "eval_unlabelled.npz", task_output=steps))
    for row in report["builds"]:
        acc = row["accuracy"]
        assert "top1_agreement" not in acc and 0.9 < acc["step_agreement"] <= 1.0
        assert 0.0 <= acc["sequence_agreement"] <= acc["step_agreement"]
    assert "per step" in (tmp_path / "b" / "report.md").read_text()


def test_an_unknown_task_output_is_one_line(heads, tmp_path):
    args = ["convert", heads["model"], "--weights", str(heads["weights"]), "--calib", str(heads["root"] / "calib.npz")]
    result = CliRunner().invoke(app, [*args, "--target", "host", "--task-output", "nope", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--task-output 'nope' is not an output" in result.output
    assert not (tmp_path / "o").exists()


def test_per_step_agreement_counts_steps_and_whole_sequences():
    from edgekit.metrics import compare

    ref = np.zeros((4, 5, 3), np.float32)
    ref[..., 0] = 1.0  # class 0 at every step
    out = ref.copy()
    out[0, 2] = [0.0, 2.0, 0.0]  # one step of sample 0 flips to class 1
    acc = compare([ref], [out], task_output=0, sequence=True)
    assert acc["step_agreement"] == pytest.approx(19 / 20) and acc["sequence_agreement"] == pytest.approx(3 / 4)
    assert "step_agreement" not in compare([ref], [out])  # only when the user names the output
