"""The report's conclusion: the fastest build that is accurate enough on the device that checked it, whether
int8 pays there, and int8 builds whose accuracy falls far below the other builds'."""

from __future__ import annotations

MIN_AGREEMENT = 0.98  # without budgets: top-1 agreement with the original (models with a class output)
MIN_COSINE = 0.99  # without budgets or a class output: worst-sample output cosine with the original
DEGRADED_GAP = 0.05  # an int8 build this far below the best build (agreement, worst-sample cosine) is flagged


def _ok(builds: list[dict]) -> list[dict]:
    return [b for b in builds if b["status"] == "ok" and b.get("accuracy")]


def flag_degraded(builds: list[dict]) -> None:
    """Mark int8 rows whose agreement or worst-sample cosine is far below the best row's (``degraded``)."""
    rows = _ok(builds)
    agreements = [b["accuracy"]["top1_agreement"] for b in rows if "top1_agreement" in b["accuracy"]]
    best_agreement = max(agreements, default=None)
    best_cosine = max((b["accuracy"]["cosine_min"] for b in rows), default=None)
    for row in (r for r in rows if r["precision"] == "int8"):
        acc, why = row["accuracy"], []
        if best_agreement is not None and acc.get("top1_agreement", 1.0) < best_agreement - DEGRADED_GAP:
            why.append(f"top-1 agreement {acc['top1_agreement']:.1%} (best build {best_agreement:.1%})")
        if acc["cosine_min"] < best_cosine - DEGRADED_GAP:
            why.append(f"worst-sample cosine {acc['cosine_min']:.3f} (best build {best_cosine:.3f})")
        if why:
            row["degraded"] = why


def _accurate(row: dict) -> bool:
    acc = row["accuracy"]
    if "top1_agreement" in acc:
        return acc["top1_agreement"] >= MIN_AGREEMENT
    return acc["cosine_min"] >= MIN_COSINE


def _name(row: dict) -> str:
    return f"{row['backend']} {row['precision']}"


def recommend(builds: list[dict], budgeted: bool) -> dict:
    """The fastest build that passes every budget (or, without budgets, edgekit's accuracy bar)."""
    timed = [b for b in _ok(builds) if b.get("latency_ms") and b.get("latency_kind") in ("measured", "emulated")]
    if budgeted:
        bar = "every budget"
        eligible = [b for b in timed if (b.get("budget") or {}).get("passed", True)]
    else:
        bar = f"top-1 agreement ≥ {MIN_AGREEMENT:.0%} (worst-sample cosine ≥ {MIN_COSINE} without a class output)"
        eligible = [b for b in timed if _accurate(b) and not b.get("degraded")]
    if not eligible:
        return {"build": None, "bar": bar, "lines": [f"No build that ran meets {bar}."]}
    best = min(eligible, key=lambda b: b["latency_ms"]["p50"])
    emulated = best["latency_kind"] == "emulated"
    lines = [
        f"**{_name(best)}** is the fastest build that meets {bar} on {best['device']}: p50 "
        f"{best['latency_ms']['p50']:.3f} ms"
        + (" (emulated: the ranking holds for this emulation; confirm on the device)" if emulated else "")
        + "."
    ]
    int8 = [b for b in eligible if b["precision"] == "int8"]
    floats = [b for b in eligible if b["precision"] != "int8"]
    pays = None
    if int8 and floats:
        fast_int8 = min(int8, key=lambda b: b["latency_ms"]["p50"])
        fast_float = min(floats, key=lambda b: b["latency_ms"]["p50"])
        ratio = fast_float["latency_ms"]["p50"] / fast_int8["latency_ms"]["p50"]
        pays = ratio > 1.0
        if pays:
            lines.append(f"int8 pays here: {_name(fast_int8)} is {ratio:.2f}× the speed of {_name(fast_float)}.")
        else:
            lines.append(
                f"int8 does not pay on this device: {_name(fast_float)} at {fast_float['latency_ms']['p50']:.3f} ms "
                f"beats every int8 build (fastest: {_name(fast_int8)} at {fast_int8['latency_ms']['p50']:.3f} ms)."
            )
    elif floats and any(b["precision"] == "int8" for b in timed):
        lines.append("No int8 build meets the bar here.")
    return {
        "build": {"backend": best["backend"], "precision": best["precision"], "device": best["device"]},
        "p50_ms": best["latency_ms"]["p50"],
        "latency_kind": best["latency_kind"],
        "bar": bar,
        "int8_pays": pays,
        "lines": lines,
    }
