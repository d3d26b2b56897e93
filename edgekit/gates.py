"""CI gates beyond the budgets: regressions against an earlier run's ``report.json``.

A build of the baseline is matched by backend, requested precision, target and device label. A match
that lost accuracy, grew or slowed down beyond the tolerances fails the run; so does a build that was
ok in the baseline and is missing or not ok now. Latency is compared only between measured (not
emulated or simulated) timings on the same device.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.safety import regular_file


@dataclass(frozen=True)
class Tolerances:
    """How much worse than the baseline a build may be."""

    accuracy_points: float = 0.5  # top-1 agreement and task accuracy, in points
    cosine: float = 0.001
    latency_ratio: float = 1.25  # p50 may grow by this factor (timings on a shared machine are noisy)
    size_ratio: float = 1.05


def load_baseline(path: Path) -> dict:
    """An earlier ``report.json`` or multi-target ``summary.json`` (one line naming the problem otherwise)."""
    regular_file(path, "--baseline")
    try:
        baseline = json.loads(Path(path).read_text())
        builds = baseline["builds"]
        if not isinstance(builds, list) or not all(isinstance(b, dict) and "backend" in b for b in builds):
            raise ValueError("'builds' is not a list of build rows")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise EdgekitError(
            f"--baseline {path} is not an edgekit report.json ({type(exc).__name__}: {str(exc)[:100]})",
            "pass the report.json of an earlier edgekit convert run",
        ) from exc
    return baseline


def _key(row: dict) -> tuple:
    return (row["backend"], row.get("requested_precision", row.get("precision")), row.get("target"), row.get("device"))


def _name(row: dict) -> str:
    return f"{row['backend']} {row.get('requested_precision', row.get('precision'))} on {row.get('device')}"


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def row_regressions(row: dict, base: dict, tol: Tolerances) -> list[str]:
    """Why ``row`` is worse than its baseline ``base`` (both ok rows)."""
    found = []
    acc, old = row.get("accuracy") or {}, base.get("accuracy") or {}
    for key, what in (("top1_agreement", "top-1 agreement"),):
        new_v, old_v = _number(acc.get(key)), _number(old.get(key))
        if old_v is not None and (new_v is None or new_v < old_v - tol.accuracy_points / 100):
            found.append(f"{what} {new_v} < baseline {old_v:.4f} − {tol.accuracy_points} pt")
    new_task, old_task = (acc.get("task_metric") or {}).get("build"), (old.get("task_metric") or {}).get("build")
    if _number(old_task) is not None and not (_number(new_task) or 0.0) >= old_task - tol.accuracy_points / 100:
        found.append(f"task accuracy {new_task} < baseline {old_task:.4f} − {tol.accuracy_points} pt")
    new_cos, old_cos = _number(acc.get("cosine")), _number(old.get("cosine"))
    if old_cos is not None and (new_cos is None or new_cos < old_cos - tol.cosine):
        found.append(f"cosine {new_cos} < baseline {old_cos:.5f} − {tol.cosine}")
    new_size, old_size = _number(row.get("size_bytes")), _number(base.get("size_bytes"))
    if old_size and new_size is not None and new_size > old_size * tol.size_ratio:
        found.append(f"size {new_size / 1e6:.3f} MB > baseline {old_size / 1e6:.3f} MB × {tol.size_ratio}")
    measured = row.get("latency_kind") == base.get("latency_kind") == "measured"
    new_p50 = _number((row.get("latency_ms") or {}).get("p50"))
    old_p50 = _number((base.get("latency_ms") or {}).get("p50"))
    if measured and old_p50 and new_p50 is not None and new_p50 > old_p50 * tol.latency_ratio:
        found.append(f"p50 {new_p50:.3f} ms > baseline {old_p50:.3f} ms × {tol.latency_ratio}")
    return found


def against_baseline(report: dict, baseline: dict, source: str, tol: Tolerances) -> dict:
    """Mark regressions in each row's ``budget`` (in place) and return the report's ``baseline`` section."""
    rows = {_key(r): r for r in report["builds"]}
    target = report["target"]["name"]
    mine = [b for b in baseline["builds"] if b.get("target", target) == target]  # a summary holds several
    missing = [] if mine else [f"the baseline has no build for target {target}: nothing could be compared"]
    compared = 0
    for base in mine:
        if base.get("status") != "ok":
            continue
        row = rows.get(_key(base))
        if row is None or row["status"] != "ok":
            missing.append(f"{_name(base)} was ok in the baseline and is {'missing' if row is None else row['status']}")
            continue
        compared += 1
        regressions = row_regressions(row, base, tol)
        if regressions:
            budget = row.setdefault("budget", {"passed": True, "violations": []})
            budget["violations"] = [*budget["violations"], *(f"regression: {r}" for r in regressions)]
            budget["passed"] = False
    return {
        "source": source,
        "tolerances": asdict(tol),
        "compared_builds": compared,
        "violations": missing,
        "passed": not missing,
    }
