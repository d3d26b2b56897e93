"""``edgekit prune-scan``: convert the model at several pruning ratios and tabulate accuracy vs latency."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from edgekit.errors import EdgekitError
from edgekit.pipeline import ConvertOptions, Log, convert
from edgekit.prune import PruneConfig
from edgekit.safety import Staging, check_output_folder
from edgekit.source import load_model


def prune_scan(opts: ConvertOptions, prune: PruneConfig, ratios: tuple[float, ...], log: Log = lambda m: None) -> dict:
    """Run ``convert`` unpruned and at every ratio (same data, device and builds); write scan.json/.md/.png."""
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise EdgekitError(f"--ratios {list(ratios)} must be fractions in (0, 1)", "write e.g. --ratios 0.2,0.3,0.5")
    opts.validate()
    out = check_output_folder(opts.out, opts.input_paths())
    framework = load_model(opts.model, opts.weights, trust=opts.trust_model).framework
    if framework != "pytorch":
        raise EdgekitError(
            f"prune-scan needs a PyTorch nn.Module; '{opts.model}' is a {framework} model",
            "pass the architecture as module:callable (or file.py:callable) with --weights",
        )
    with Staging(out) as staging:
        staged = staging.root / "out"
        staged.mkdir()
        points = []
        for ratio in (0.0, *sorted(set(ratios))):
            name = f"ratio_{ratio:.2f}"
            log(f"scan: {'unpruned' if ratio == 0 else f'ratio {ratio}'}")
            config = None if ratio == 0 else replace(prune, ratio=ratio)
            report = convert(replace(opts, prune=config, out=staged / name), log)
            points.append(_point(ratio, name, report))
        scan = {
            "kind": prune.kind,
            "importance": prune.importance,
            "recover_steps": prune.recover_steps,
            "device": points[0]["device"],
            "points": points,
        }
        (staged / "scan.json").write_text(json.dumps(scan, indent=2))
        (staged / "scan.md").write_text(markdown(scan))
        plot(scan, staged / "scan.png")
        staging.publish(staged)
    return scan


def _point(ratio: float, folder: str, report: dict) -> dict:
    pruning = report.get("pruning") or {}
    builds = []
    for b in report["builds"]:
        acc = b.get("accuracy") or {}
        task = acc.get("task_metric")
        builds.append(
            {
                "build": f"{b['backend']} {b['precision']}",
                "status": b["status"],
                "reason": b.get("reason"),
                "p50_ms": (b.get("latency_ms") or {}).get("p50"),
                "latency_kind": b.get("latency_kind"),
                "accuracy": task["build"] if task else acc.get("top1_agreement", acc.get("cosine")),
                "accuracy_name": task["name"] if task else ("top-1 agreement" if "top1_agreement" in acc else "cosine"),
            }
        )
    original = report["original"]
    return {
        "ratio": ratio,
        "report": f"{folder}/report.md",
        "device": report["runner"],
        "macs": report["model"].get("macs"),
        "params": report["model"].get("params"),
        "original_task_metric": (original.get("task_metric") or {}).get("value"),
        "pruned_vs_original": pruning.get("pruned_vs_original"),
        "builds": builds,
    }


def markdown(scan: dict) -> str:
    names = sorted({b["build"] for p in scan["points"] for b in p["builds"]})
    base = {b["build"]: b["p50_ms"] for b in scan["points"][0]["builds"]}
    acc_name = next((b["accuracy_name"] for p in scan["points"] for b in p["builds"] if b["accuracy"] is not None), "")
    head = ["ratio", "MACs", "params"] + [f"{n}: {acc_name} / p50 ms (× vs unpruned)" for n in names]
    lines = [
        f"# edgekit prune-scan — {scan['kind']}, {scan['importance']} importance, "
        f"{scan['recover_steps']} recovery steps",
        "",
        f"Checked by: {scan['device']}. Accuracy of each build against the unpruned original; latency p50.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for p in scan["points"]:
        cells = [f"{p['ratio']:.2f}", f"{p['macs'] / 1e6:.2f} M" if p["macs"] else "—", f"{p['params']:,}"]
        by_name = {b["build"]: b for b in p["builds"]}
        for n in names:
            b = by_name.get(n)
            if b is None or b["status"] != "ok":
                cells.append(b["status"] if b else "—")
                continue
            emu = " (emu)" if b["latency_kind"] == "emulated" else ""
            speed = f" ({base[n] / b['p50_ms']:.2f}×)" if base.get(n) else ""
            cells.append(f"{b['accuracy'] * 100:.1f}% / {b['p50_ms']:.3f}{emu}{speed}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Reports: " + ", ".join(f"`{p['report']}`" for p in scan["points"]), ""]
    return "\n".join(lines)


def plot(scan: dict, path: Path) -> None:
    """Accuracy vs p50 latency, one line per build, points labelled with the ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({b["build"] for p in scan["points"] for b in p["builds"]})
    for n in names:
        pts = [
            (b["p50_ms"], b["accuracy"] * 100, p["ratio"])
            for p in scan["points"]
            for b in p["builds"]
            if b["build"] == n and b["status"] == "ok" and b["accuracy"] is not None
        ]
        if not pts:
            continue
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], marker="o", label=n)
        for x, y, r in pts:
            ax.annotate(f"{r:.2f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("p50 latency, ms" + (" (emulated)" if "emulated" in scan["device"] else ""))
    ax.set_ylabel("accuracy vs original, %")
    ax.set_title(f"prune-scan: {scan['kind']} pruning (labels: ratio)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
