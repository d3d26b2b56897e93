"""Accuracy of a build against the original, and latency statistics."""

from __future__ import annotations

import numpy as np


def latency_stats(times_ms: list[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "min": float(a.min()),
        "n": len(a),
    }


def _cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    return np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))


def is_classifier(output: np.ndarray) -> bool:
    """A (N, C) output with C > 1 is treated as class scores."""
    return output.ndim == 2 and output.shape[1] > 1


def is_sequence(output: np.ndarray) -> bool:
    """A (N, T, C) output with C > 1: class scores per time step."""
    return output.ndim == 3 and output.shape[2] > 1


def compare(
    reference: list[np.ndarray],
    produced: list[np.ndarray],
    labels: np.ndarray | None = None,
    task_output: int = 0,
    sequence: bool = False,
) -> dict:
    """max-abs error and cosine (mean and worst sample) of every output; top-1 agreement and task accuracy of
    the class output ``task_output`` when it is (N, C); per-time-step agreement when ``sequence`` says that a
    (N, T, C) task output carries classes per step."""
    if len(reference) != len(produced):
        raise ValueError(f"build returned {len(produced)} outputs, the original {len(reference)}")
    per_output = []
    for ref, out in zip(reference, produced, strict=True):
        if ref.shape != out.shape:
            raise ValueError(f"output shape {out.shape} differs from the original's {ref.shape}")
        cos = _cosine_per_sample(ref, out)
        per_output.append(
            {
                "max_abs": float(np.abs(ref.astype(np.float64) - out).max()),
                "cosine": float(cos.mean()),
                "cosine_min": float(cos.min()),
            }
        )
    result = dict(per_output[0])
    result["non_finite_outputs"] = int(sum(np.size(o) - np.isfinite(o).sum() for o in produced if o.dtype.kind in "fc"))
    result["max_abs"] = max(o["max_abs"] for o in per_output)
    result["cosine"] = min(o["cosine"] for o in per_output)
    result["cosine_min"] = min(o["cosine_min"] for o in per_output)
    if len(per_output) > 1:
        result["per_output"] = per_output
    ref, out = reference[task_output], produced[task_output]
    if task_output:
        result["task_output"] = task_output
    if is_classifier(ref):
        result["top1_agreement"] = float((ref.argmax(1) == out.argmax(1)).mean())
        result.update(_beyond_top1(ref, out))
        if labels is not None:
            result["task_metric"] = {
                "name": "top1_accuracy",
                "original": float((ref.argmax(1) == labels).mean()),
                "build": float((out.argmax(1) == labels).mean()),
            }
    elif sequence and is_sequence(ref):
        same = ref.argmax(2) == out.argmax(2)
        result["step_agreement"] = float(same.mean())  # over every sample and time step
        result["sequence_agreement"] = float(same.all(1).mean())  # samples whose every step agrees
    return result


CONFIDENT = 0.5  # the original's top-1 probability from which a sample counts as confident


def _probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities: the output itself when it already is one (rows ≥ 0 summing to 1), else its softmax."""
    scores = scores.astype(np.float64)
    if (scores >= 0).all() and np.allclose(scores.sum(1), 1.0, atol=1e-3):
        return scores
    e = np.exp(scores - scores.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _beyond_top1(reference: np.ndarray, produced: np.ndarray) -> dict:
    """Agreement where the original is confident (near-ties make plain agreement noisy), and whether the
    original's top-1 class is still among the build's top 5."""
    top1 = reference.argmax(1)
    confident = _probabilities(reference).max(1) >= CONFIDENT
    agree = top1 == produced.argmax(1)
    found = {
        "confident": {
            "threshold": CONFIDENT,
            "samples": int(confident.sum()),
            "top1_agreement": float(agree[confident].mean()) if confident.any() else None,
        }
    }
    if reference.shape[1] > 5:
        top5 = np.argsort(-produced, axis=1)[:, :5]
        found["top5_contains_top1"] = float((top5 == top1[:, None]).any(1).mean())
    return found


def agreement(accuracy: dict) -> tuple[float | None, str]:
    """The class agreement of a comparison and its name: top-1 (N, C), else per time step (a named
    (N, T, C) output), else None."""
    if "top1_agreement" in accuracy:
        return accuracy["top1_agreement"], "top-1 agreement"
    if "step_agreement" in accuracy:
        return accuracy["step_agreement"], "per-step agreement"
    return None, "agreement"


def finite_metrics(accuracy: dict) -> bool:
    """Whether the build's outputs and every accuracy number are finite (NaN fails a row, never passes it)."""
    numbers = [v for k, v in accuracy.items() if isinstance(v, float)]
    numbers += [v for o in accuracy.get("per_output", []) for v in o.values()]
    task = accuracy.get("task_metric")
    if task:
        numbers += [task["original"], task["build"]]
    return accuracy.get("non_finite_outputs", 0) == 0 and all(np.isfinite(numbers))
