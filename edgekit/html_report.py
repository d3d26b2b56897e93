"""``report.html``: one self-contained page (inline SVG plots and CSS, no scripts, nothing fetched).

Plots: accuracy against latency per build, latency distributions, artifact sizes, and the per-layer
error of the builds ``--layer-diff`` compared. The text below them is ``report.md`` rendered.
"""

from __future__ import annotations

import html
import io

from markdown_it import MarkdownIt

from edgekit.converters import backend_names, backend_spec

# One colour per backend (declared in its BackendSpec), used in every plot and only there: the page's text
# and tables use none of them.
COLOURS = {"original": "#4d4d4d", **{name: backend_spec(name).color for name in backend_names()}}
CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1180px; color: #1a1a1a; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.6em; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(540px, 1fr)); gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: .5em; } figcaption { font-size: .9em; color: #555; }
figure svg { width: 100%; height: auto; } #plot-layers { grid-column: 1 / -1; }
table { border-collapse: collapse; font-size: .9em; } th, td { border: 1px solid #ccc; padding: .25em .5em; }
th { background: #f2f2f2; } td { text-align: right; }
td:first-child, td:nth-child(2), td:nth-child(3) { text-align: left; }
code { background: #f5f5f5; padding: 0 .2em; }
"""


CAP_DB = 120.0  # exact layers (infinite SNR) are drawn here


def _label(row: dict) -> str:
    return f"{row['backend']} {row.get('requested_precision', row['precision'])}"


def _colour(backend: str) -> str:
    if backend in COLOURS:
        return COLOURS[backend]
    return backend_spec(backend).color if backend in backend_names() else "#17becf"


def _svg(fig) -> str:
    import matplotlib.pyplot as plt

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _time_axis(ax, values: list[float]) -> None:
    """A log time axis when the times span more than a decade, else linear (readable ticks)."""
    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_xscale("log")


def _checked(report: dict) -> list[dict]:
    return [r for r in report["builds"] if r["status"] == "ok" and r.get("latency_ms") and r.get("accuracy")]


def _accuracy_of(acc: dict) -> tuple[float, str]:
    if "top1_agreement" in acc:
        return acc["top1_agreement"] * 100, "top-1 agreement with the original (%)"
    return acc["cosine_min"], "worst-sample output cosine with the original"


def accuracy_latency_plot(report: dict) -> str | None:
    rows = _checked(report)
    if not rows:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ylabel, times = "", []
    for i, row in enumerate(rows):
        y, ylabel = _accuracy_of(row["accuracy"])
        x = row["latency_ms"]["p50"]
        times.append(x)
        ax.scatter([x], [y], s=90, color=_colour(row["backend"]), marker="o" if row["precision"] == "int8" else "s")
        ax.annotate(_label(row), (x, y), textcoords="offset points", xytext=(6, 4 + 9 * (i % 3)), fontsize=8)
    if all("speedup_vs_original" in r for r in rows):  # timed on the same host as the original
        x = report["original"]["latency_ms"]["p50"]
        times.append(x)
        ref = 100.0 if "top1_agreement" in rows[0]["accuracy"] else 1.0
        ax.scatter([x], [ref], s=90, color=COLOURS["original"], marker="*")
        ax.annotate("original", (x, ref), textcoords="offset points", xytext=(6, -12), fontsize=8)
    _time_axis(ax, times)
    kind = rows[0].get("latency_kind", "measured")
    ax.set_xlabel(f"p50 latency, ms ({kind}{', compare builds only' if kind != 'measured' else ''})")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return _svg(fig)


def latency_plot(report: dict) -> str | None:
    rows = [r for r in _checked(report) if r.get("latencies_ms")]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    series = [(_label(r), r["backend"], r["latencies_ms"]) for r in rows]
    if report["original"].get("latencies_ms") and all("speedup_vs_original" in r for r in rows):
        series.insert(0, ("original", "original", report["original"]["latencies_ms"]))
    fig, ax = plt.subplots(figsize=(6.4, 0.5 * len(series) + 1.6))
    parts = ax.boxplot([s[2] for s in series], orientation="horizontal", patch_artist=True, widths=0.6)
    for patch, (_, backend, _) in zip(parts["boxes"], series, strict=True):
        patch.set_facecolor(_colour(backend))
    ax.set_yticks(range(1, len(series) + 1), [s[0] for s in series])
    _time_axis(ax, [t for s in series for t in s[2]])
    ax.set_xlabel("latency per inference, ms (every timed run)")
    ax.grid(True, axis="x", alpha=0.3)
    return _svg(fig)


def size_plot(report: dict) -> str | None:
    rows = [r for r in report["builds"] if r.get("size_bytes")]
    if not rows:
        return None
    import matplotlib.pyplot as plt

    series = [("original", "original", report["original"]["size_bytes"])]
    series += [(_label(r), r["backend"], r["size_bytes"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 0.45 * len(series) + 1.4))
    ys = range(len(series))
    ax.barh(list(ys), [s[2] / 1e6 for s in series], color=[_colour(s[1]) for s in series])
    ax.set_yticks(list(ys), [s[0] for s in series])
    ax.invert_yaxis()
    ax.set_xlabel("deployable size, MB")
    ax.grid(True, axis="x", alpha=0.3)
    return _svg(fig)


def layer_plot(report: dict) -> str | None:
    diffs = report.get("layer_diff") or {}
    shown = {name: d for name, d in diffs.items() if d.get("rows")}
    if not shown:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12.8, 4.0))
    for name, d in shown.items():
        snr = [CAP_DB if r["snr_db"] is None else min(r["snr_db"], CAP_DB) for r in d["rows"]]
        ax.plot(range(len(snr)), snr, color=_colour(d["backend"]), label=name, linewidth=1.4)
        jump = d.get("first_jump")
        if jump:
            index = next(i for i, r in enumerate(d["rows"]) if r["node"] == jump["node"])
            ax.scatter([index], [snr[index]], color=_colour(d["backend"]), s=60, zorder=3)
    ax.set_xlabel("layer (graph order)")
    ax.set_ylabel("SNR against the original, dB")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _svg(fig)


def render(report: dict, markdown_text: str) -> str:
    """The whole page."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: smaller, selectable
    plots = [
        (
            "accuracy-latency",
            "Accuracy against latency per build (■ float, ● int8, ★ the original)",
            accuracy_latency_plot(report),
        ),
        ("latency", "Latency distribution of every timed run", latency_plot(report)),
        ("size", "Deployable size", size_plot(report)),
        ("layers", "Per-layer error (edgekit diff; ● the first layer whose error jumps)", layer_plot(report)),
    ]
    figures = "\n".join(
        f'<figure id="plot-{key}">{svg}<figcaption>{html.escape(caption)}</figcaption></figure>'
        for key, caption, svg in plots
        if svg
    )
    heading, _, rest = markdown_text.partition("\n")
    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(rest)
    title = html.escape(heading.lstrip("# "))
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{CSS}</style></head><body>\n<h1>{title}</h1>\n"
        f'<section class="plots">{figures}</section>\n<section class="text">{body}</section>\n</body></html>\n'
    )
