"""report.json, report.md and the terminal table."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

COLUMNS = (
    "backend",
    "precision",
    "device",
    "size",
    "MACs",
    "cosine",
    "top-1 agr.",
    "task acc.",
    "p50 ms",
    "p90 ms",
    "speedup",
    "status",
)


def _mb(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} MB"


def _macs(n: int | None) -> str:
    return "—" if n is None else f"{n / 1e6:.2f} M"


def _cells(row: dict) -> list[str]:
    acc, lat = row.get("accuracy") or {}, row.get("latency_ms") or {}
    task = acc.get("task_metric")
    status = row["status"].upper() if row["status"] != "ok" else "ok"
    if row["status"] == "ok" and not row.get("budget", {}).get("passed", True):
        status = "BUDGET"
    emulated = {"emulated": " (emu)", "simulated": " (C-sim)"}.get(row.get("latency_kind"), "")
    mixed = (row.get("executed") or {}).get("precision") in ("mixed", "float")
    return [
        row["backend"],
        row["precision"] + (f" ({row['executed']['precision']})" if mixed else ""),
        row["device"],
        _mb(row.get("size_bytes")),
        _macs(row.get("macs")),
        f"{acc['cosine']:.5f}" if "cosine" in acc else "—",
        f"{acc['top1_agreement'] * 100:.1f}%"
        if "top1_agreement" in acc
        else (f"{acc['step_agreement'] * 100:.1f}% per step" if "step_agreement" in acc else "—"),
        f"{task['build'] * 100:.1f}% (orig {task['original'] * 100:.1f}%)" if task else "—",
        f"{lat['p50']:.3f}{emulated}" if lat else "—",
        f"{lat['p90']:.3f}" if lat else "—",
        f"{row['speedup_vs_original']:.2f}×" if row.get("speedup_vs_original") else "—",
        status,
    ]


def _original_cells(report: dict) -> list[str]:
    o = report["original"]
    lat = o["latency_ms"]
    task = f"{o['task_metric']['value'] * 100:.1f}%" if "task_metric" in o else "—"
    return [
        f"original ({o['framework']})",
        "fp32",
        o["device"],
        _mb(o["size_bytes"]),
        _macs(o.get("macs")),
        "1",
        "100%",
        task,
        f"{lat['p50']:.3f}",
        f"{lat['p90']:.3f}",
        "1.00×",
        "ref",
    ]


def _runs_as_run(report: dict) -> str:
    """Say so when the device ran fewer repetitions than asked (emulation caps them)."""
    used = sorted({(b["warmup"], b["runs"]) for b in report["builds"] if b.get("runs") is not None})
    asked = (report["settings"]["warmup"], report["settings"]["runs"])
    if not used or used == [asked]:
        return ""
    return " (as run on the device: " + ", ".join(f"{w} warm-up + {r} timed" for w, r in used) + ")"


def markdown(report: dict) -> str:
    t = report["target"]
    lines = [
        f"# edgekit report — target {t['name']} ({t['triple']})",
        "",
        f"Checked by: {report['runner']}. Held-out samples: {report['data']['evaluation']['samples']} "
        f"from `{report['data']['evaluation']['source']}`; calibration: {report['data']['calibration']['samples']} "
        f"samples from `{report['data']['calibration']['source']}`. Latency: {report['settings']['warmup']} "
        f"warm-up + {report['settings']['runs']} timed runs, {report['settings']['threads']} thread(s)"
        f"{_runs_as_run(report)}.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "---|" * len(COLUMNS),
        "| " + " | ".join(_original_cells(report)) + " |",
    ]
    lines += ["| " + " | ".join(_cells(r)) + " |" for r in report["builds"]]
    lines += [
        "",
        f"ONNX export check: cosine {report['onnx']['check']['cosine_min']:.6f} (worst sample), "
        f"max abs {report['onnx']['check']['max_abs']:.3g}.",
        "",
    ]
    details = []
    for r in report["builds"]:
        bits = []
        if r.get("reason"):
            bits.append(f"reason: {r['reason']}")
        if r.get("size_compressed_bytes"):
            bits.append(f"compressed (deflate) {_mb(r['size_compressed_bytes'])}")
        if r.get("params"):
            bits.append(f"{r['params']:,} parameters")
        if r.get("quantization"):
            bits.append(r["quantization"])
        acc = r.get("accuracy") or {}
        confident = acc.get("confident")
        if confident and confident["samples"]:
            bits.append(
                f"top-1 agreement on the {confident['samples']} samples where the original is confident "
                f"(p ≥ {confident['threshold']}): {confident['top1_agreement']:.1%}"
            )
        if "top5_contains_top1" in acc:
            bits.append(f"the original's top-1 is in the build's top 5 on {acc['top5_contains_top1']:.1%}")
        cache = r.get("cache") or {}
        if cache.get("reused"):
            bits.append(f"build reused from the cache (first built in {cache['first_build_s']:.1f} s)")
        if cache.get("measured_at"):
            bits.append(f"measurement reused from the cache (measured {cache['measured_at']}; --recheck runs it again)")
        bits += r.get("notes", [])
        e = r.get("executed") or {}
        if "int8_share" in e:
            bits.append(
                f"executed in int8: {e['int8_compute_layers']}/{e['int8_compute_layers'] + e['float_compute_layers']} "
                f"compute layers ({e['source']})"
            )
        if e.get("float_kinds"):
            kinds = ", ".join(f"{n} {k}" for k, n in e["float_kinds"].items())
            bits.append(f"compute layers not in int8: {kinds}")
        if r.get("runtime_precisions"):
            bits.append(f"layers run on the device, by type (and runtime precision): {r['runtime_precisions']}")
        if r.get("degraded"):
            bits.append("DEGRADED: " + "; ".join(r["degraded"]))
        if r.get("budget", {}).get("violations"):
            bits.append("budget: " + "; ".join(r["budget"]["violations"]))
        if r.get("artifacts"):
            bits.append("artifacts: " + ", ".join(f"`{a}`" for a in r["artifacts"]))
        if bits:
            details.append(f"- **{r['backend']} {r['precision']}** — " + "; ".join(bits))
    if details:
        lines += ["## Builds", "", *details, ""]
    farmed = [r for r in report["builds"] if r.get("boards")]
    if farmed:
        lines += ["## Board farm", ""]
        for r in farmed:
            lines += [f"**{r['backend']} {r['precision']}**", "", *farm_lines(r["boards"]), ""]
    if report.get("pruning"):
        lines += ["## Pruning", "", *_pruning_lines(report["pruning"]), ""]
    fb = report.get("accuracy_fallback")
    if fb:
        kept = ", ".join(f"`{n}`" for n in fb["kept_float"]) or "none needed"
        lines += [
            "## Accuracy fallback",
            "",
            f"Budget {fb['max_drop_points']} pt; chosen by {fb.get('chosen_by') or 'edgekit'} on "
            f"{fb['chosen_on']}: agreement "
            f"{fb['agreement_before'] * 100:.1f}% → {fb['agreement_after'] * 100:.1f}%, cosine "
            f"{fb['cosine_before']:.4f} → {fb['cosine_after']:.4f}"
            f"{'' if fb['met_on_calibration'] else ' (budget NOT met on calibration data)'}. "
            f"Layers kept in float: {kept}.",
            "",
        ]
    diffs = report.get("layer_diff") or {}
    if diffs:
        lines += ["## Per-layer error", "", *_layer_lines(diffs), ""]
    base = report.get("baseline")
    if base:
        verdict = "passed" if base["passed"] else "FAILED: " + "; ".join(base["violations"])
        lines += [
            "## Baseline",
            "",
            f"Compared {base['compared_builds']} build(s) with `{base['source']}` (tolerances {base['tolerances']}): "
            f"{verdict}. Per-build regressions are listed with the budgets above.",
            "",
        ]
    if report["not_verified"]:
        lines += ["## Not verified", "", *[f"- {n}" for n in report["not_verified"]], ""]
    if report.get("recommendation"):
        lines += ["## Recommendation", "", *report["recommendation"]["lines"], ""]
    return "\n".join(lines)


def farm_lines(farm: dict) -> list[str]:
    """A build's per-board table from a board farm, with the median and spread across the boards."""
    lines = [
        f"{farm['ok']} of {farm['ok'] + farm['failed']} boards under key `{farm['key']}` (tracker {farm['tracker']}) "
        f"in {farm['wall_s']:.1f} s: median p50 {farm['median_p50_ms']:.2f} ms, spread {farm['spread']:.0%} "
        f"across {farm['counted']}; outputs checked from {farm['outputs_from']}.",
        "",
        "| board | machine | status | p50 ms | p90 ms | max abs diff vs first board | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for b in farm["boards"]:
        kind = b["machine"] + (" (emulated)" if b["emulated"] else "")
        if b["status"] != "ok":
            lines.append(f"| {b['board']} | {kind} | FAILED | — | — | — | {b['error']} |")
            continue
        diff = b["max_abs_diff_vs_first"]
        note = "OUTLIER" if b["outlier"] else ("" if b["counted"] else "not counted (emulated)")
        lines.append(
            f"| {b['board']} | {kind} | ok | {b['latency_ms']['p50']:.2f} | {b['latency_ms']['p90']:.2f} | "
            f"{'shape differs' if diff is None else f'{diff:.3g}'} | {note} |"
        )
    return lines


def _layer_lines(diffs: dict) -> list[str]:
    lines = []
    for name, d in diffs.items():
        if "error" in d:
            lines.append(f"- **{name}**: not compared ({d['error']})")
            continue
        jump, worst = d.get("first_jump"), d.get("largest_jump")

        def layer(r: dict) -> str:
            snr = "exact" if r["snr_db"] is None else f"SNR {r['snr_db']:.1f} dB"
            return f"`{r['node']}` ({r['op']}, {snr})"

        where = "no layer loses ≥ 6 dB on its own to below 25 dB"
        if jump:
            where = f"first layer whose error jumps: {layer(jump)}"
        if worst and worst != jump:
            where += f"; largest jump: {layer(worst)}"
        lines.append(f"- **{name}** ({len(d['rows'])} layers, {d['compared_through']}): {where}")
    return [*lines, "", "First held-out sample; `edgekit diff` shows every layer."]


def _pruning_lines(p: dict) -> list[str]:
    c, check = p["config"], p["pruned_vs_original"]
    task = check.get("task_metric")
    lines = [
        f"{c['kind']} pruning at ratio {c['ratio']} ({c['importance']} importance); never pruned: "
        + ", ".join(f"`{n}`" for n in p["ignored_layers"])
        + ".",
        f"MACs {p['macs_before'] / 1e6:.2f} M → {p['macs_after'] / 1e6:.2f} M "
        f"({p['macs_after'] / max(p['macs_before'], 1):.0%}); parameters {p['params_before']:,} → {p['params_after']:,}"
        + (f"; {p['sparsity']:.0%} of the pruned layers' weights are zero" if p.get("sparsity") is not None else "")
        + ".",
    ]
    if p["channels"]:
        lines.append("Channels: " + ", ".join(f"`{n}` {a}→{b}" for n, (a, b) in p["channels"].items()) + ".")
    r = p["recovery"]
    recovery = "BatchNorm statistics re-estimated on the calibration data" if r.get("bn_reestimated") else "no BN"
    if r.get("steps"):
        recovery += (
            f"; {r['steps']} self-distillation steps on {r['data']} (lr {r['lr']}), loss "
            f"{r['loss_first']:.4g} → {r['loss_last']:.4g}"
        )
    lines.append(f"Recovery: {recovery}.")
    lines.append(
        f"Pruned PyTorch model vs the original on the held-out data: cosine {check['cosine']:.5f}"
        + (f", top-1 agreement {check['top1_agreement'] * 100:.1f}%" if "top1_agreement" in check else "")
        + (
            f", task accuracy {task['build'] * 100:.2f}% (original {task['original'] * 100:.2f}%, "
            f"drop {(task['original'] - task['build']) * 100:.2f} pt)"
            if task
            else ""
        )
        + ". Every build is compared with the unpruned original."
    )
    return lines


def write_report(report: dict, folder: Path) -> None:
    """report.json, report.md and the self-contained report.html with plots."""
    from edgekit.html_report import render

    text = markdown(report)
    (folder / "report.json").write_text(json.dumps(report, indent=2))
    (folder / "report.md").write_text(text)
    (folder / "report.html").write_text(render(report, text), encoding="utf-8")


def summary_markdown(summary: dict) -> str:
    """Every target's builds in one table (each target's own report has the details)."""
    cols = ("target", "backend", "precision", "device", "size", "cosine", "top-1 agr.", "p50 ms", "status")
    lines = [
        "# edgekit summary — " + ", ".join(t["target"] for t in summary["targets"]),
        "",
        "Each target's report: " + ", ".join(f"[{t['folder']}]({t['folder']}/report.md)" for t in summary["targets"]),
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for report in summary["reports"]:
        for row in report["builds"]:
            cells = _cells(row)
            keep = [cells[COLUMNS.index(c)] for c in cols[1:]]
            lines.append(f"| {report['target']['name']} | " + " | ".join(keep) + " |")
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, folder: Path) -> None:
    (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    (folder / "summary.md").write_text(summary_markdown(summary))


def wide_console(width: int = 160) -> Console:
    """A stdout console; CI logs and pipes get ``width`` columns instead of 80 squeezed ones."""
    console = Console()
    if not console.is_terminal:
        console.width = max(console.width, width)
    return console


def print_table(report: dict, console: Console | None = None) -> None:
    console = console or wide_console()
    t = report["target"]
    table = Table(title=f"edgekit · target {t['name']} · checked by {report['runner']}")
    for col in COLUMNS:
        table.add_column(col, justify="right" if col not in ("backend", "precision", "device", "status") else "left")
    table.add_row(*_original_cells(report), style="dim")
    styles = {"ok": "green", "BUDGET": "yellow", "FAILED": "red", "SKIPPED": "blue"}
    for row in report["builds"]:
        cells = _cells(row)
        table.add_row(*cells, style=styles.get(cells[-1]))
    console.print(table)
    for row in report["builds"]:
        if row.get("reason"):
            console.print(f"[bold]{row['backend']} {row['precision']}[/]: {row['reason']}")
        if row.get("degraded"):
            console.print(f"[yellow]{row['backend']} {row['precision']}: degraded[/] — " + "; ".join(row["degraded"]))
        farm = row.get("boards")
        if farm:
            console.print(
                f"[bold]{row['backend']} {row['precision']}[/] on {farm['ok']}/{farm['ok'] + farm['failed']} boards: "
                f"median p50 {farm['median_p50_ms']:.2f} ms, spread {farm['spread']:.0%}"
            )
            for b in farm["boards"]:
                if b["status"] != "ok":
                    console.print(f"  [red]{b['board']}: failed[/] — {b['error']}", highlight=False)
                else:
                    flag = " [yellow]OUTLIER[/]" if b["outlier"] else (" (emulated)" if b["emulated"] else "")
                    console.print(f"  {b['board']} {b['machine']}: p50 {b['latency_ms']['p50']:.2f} ms{flag}")
        e = row.get("executed") or {}
        if e.get("mostly_float"):
            console.print(
                f"[yellow]{row['backend']} {row['precision']}: int8 mostly runs in float[/] — "
                f"{e['int8_compute_layers']} int8 vs {e['float_compute_layers']} float compute layers ({e['source']})"
            )
    for note in report["not_verified"]:
        console.print(f"[yellow]not verified:[/] {note}")
    for line in (report.get("recommendation") or {}).get("lines", []):
        console.print(f"[bold]recommendation:[/] {line.replace('**', '')}", highlight=False)


def exit_code(report: dict) -> int:
    """0 when every build is ok, within budget and no worse than the baseline, 1 otherwise (skipped builds pass).

    A multi-target summary passes when every target's report does.
    """
    if "reports" in report:
        return max((exit_code(r) for r in report["reports"]), default=0)
    if not (report.get("baseline") or {}).get("passed", True):
        return 1
    for row in report["builds"]:
        if row["status"] == "failed" or not row.get("budget", {}).get("passed", True):
            return 1
    return 0
