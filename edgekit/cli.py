"""The ``edgekit`` command line: a thin layer over :mod:`edgekit.pipeline`."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from edgekit.data import ImagePreprocess, check_input_shape
from edgekit.errors import EdgekitError, one_line
from edgekit.gates import Tolerances
from edgekit.junit import write_junit
from edgekit.onnx_hub import QuantConfig
from edgekit.pipeline import Budgets, ConvertOptions, convert, convert_targets
from edgekit.procs import Terminated, signals_as_interrupt
from edgekit.progress import Progress, RichProgress, summarise_hidden, third_party_output_hidden
from edgekit.prune import PruneConfig
from edgekit.recipe import apply_recipe
from edgekit.report import exit_code, print_table, wide_console
from edgekit.safety import check_result_file, regular_file
from edgekit.target import list_targets, load_target

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Convert a trained model into checked edge builds (TFLite, OpenVINO, TVM, ONNX Runtime).",
)
err = Console(stderr=True)


def _print_error(exc: EdgekitError) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)


def _usage_error(exc: EdgekitError) -> typer.Exit:
    """Print the one-line error; the returned Exit carries code 2 (bad input)."""
    _print_error(exc)
    return typer.Exit(2)


def parse_input_shapes(values: list[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    """``[NAME:]1x3x224x224[:dtype]`` → {name: (shape, dtype)}; a bare shape has the name ''."""
    shapes = {}
    for value in values:
        m = re.fullmatch(r"(?:([^:]+):)?(\d+(?:x\d+)*)(?::(\w+))?", value)
        if not m:
            raise EdgekitError(
                f"--input-shape '{value}' is not NAME:1x3x224x224[:dtype]",
                "write e.g. --input-shape input:1x3x224x224 or ids:1x128:int64",
            )
        shape, dtype = tuple(int(d) for d in m.group(2).split("x")), m.group(3) or "float32"
        check_input_shape(m.group(1) or "", shape, dtype)
        shapes[m.group(1) or ""] = (shape, dtype)
    return shapes


def parse_backend_options(values: list[str], hls_config: Path | None) -> dict[str, dict]:
    """``coreml.palettize=4`` → {"coreml": {"palettize": 4}}; ``--hls-config`` → {"hls4ml": {...}}."""
    options: dict[str, dict] = {}
    for value in values:
        key, sep, raw = value.partition("=")
        backend, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise EdgekitError(f"--backend-option '{value}' is not BACKEND.KEY=VALUE", "write e.g. coreml.palettize=4")
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            parsed = raw
        options.setdefault(backend, {})[name] = parsed
    if hls_config is not None:
        try:
            config = json.loads(regular_file(hls_config, "--hls-config").read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EdgekitError(f"--hls-config {hls_config}: {exc}", "give a readable JSON file") from exc
        if not isinstance(config, dict):
            raise EdgekitError(f"--hls-config {hls_config} holds a {type(config).__name__}", "give a JSON object")
        options.setdefault("hls4ml", {}).update(config)
    return options


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def _floats(value: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise EdgekitError(
            f"{flag} '{value}' is not a comma-separated list of numbers", f"write e.g. {flag} 127"
        ) from None
    if not all(math.isfinite(v) for v in values):
        raise EdgekitError(f"{flag} '{value}' is not finite", f"write e.g. {flag} 127")
    return values


def _per_channel(value: str, flag: str) -> tuple[float, ...]:
    values = _floats(value, flag)
    if len(values) not in (1, 3):
        raise EdgekitError(f"{flag} '{value}' needs 1 or 3 values", f"write e.g. {flag} 127 or {flag} 124,116,104")
    return values * 3 if len(values) == 1 else values


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    """Bad input → one line and exit 2; Ctrl-C, SIGTERM, SIGHUP → cleanup and exit 130/143/129; never a traceback."""
    try:
        with signals_as_interrupt():
            yield
    except EdgekitError as exc:
        raise _usage_error(exc) from exc
    except Terminated as exc:
        err.print(f"[bold red]stopped:[/] {signal.Signals(exc.signum).name}; nothing was published", highlight=False)
        raise typer.Exit(128 + exc.signum) from exc
    except KeyboardInterrupt as exc:
        err.print("[bold red]interrupted:[/] nothing was published", highlight=False)
        raise typer.Exit(130) from exc
    except (typer.Exit, typer.Abort):
        raise
    except Exception as exc:
        if os.environ.get("EDGEKIT_DEBUG"):
            raise
        err.print(
            f"[bold red]internal error:[/] {one_line(exc)} — fix: rerun with EDGEKIT_DEBUG=1 for the traceback "
            "and report it to edgekit",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1) from exc


def _execute(
    opts: ConvertOptions, junit: Path | None = None, quiet: bool = False, as_json: bool = False, verbose: bool = False
) -> None:
    """Run ``convert``; the table (or the report as JSON) on stdout, progress bars on stderr unless quiet.

    What the libraries print goes to ``logs/libraries.log`` in the output folder (one summary line here),
    unless ``verbose``.
    """
    if not verbose:
        logging.getLogger("nncf").setLevel(logging.ERROR)
    hidden = None
    with _guarded():
        if junit is not None:
            check_result_file(junit, "--junit", tuple(opts.input_paths()))
        with third_party_output_hidden(verbose) as streams:
            quiet_run = quiet or as_json
            console = Console(file=streams.terminal, stderr=True, log_path=False)
            progress = Progress() if quiet_run else RichProgress(console)
            progress.library_log, progress.verbose = streams.library_log, verbose
            targets = _csv(opts.target) or (opts.target,)
            try:
                with progress:
                    if len(targets) > 1:
                        report = convert_targets(opts, list(targets), progress)
                    else:
                        report = convert(opts, progress)
            finally:
                hidden = streams.library_log and summarise_hidden(streams.library_log)
                if streams.library_log:
                    streams.library_log.unlink(missing_ok=True)
        if junit is not None:
            write_junit(report, junit)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    elif not quiet:
        for one in report.get("reports", [report]):
            print_table(one)
        if hidden:
            err.print(f"[dim]{hidden} (kept in the output's logs/ folder)[/]", highlight=False)
        if "reports" in report:
            err.print(f"summary: {Path(opts.out) / 'summary.md'}; each target's report.md/.html in its folder")
        else:
            err.print(f"report: {Path(opts.out) / 'report.md'}, {Path(opts.out) / 'report.html'}")
    raise typer.Exit(exit_code(report))


@app.command("convert")
def convert_cmd(
    ctx: typer.Context,
    model: Annotated[
        str | None,
        typer.Argument(
            rich_help_panel="Model", help="model.onnx, .pt/.pt2, .keras/.tflite/SavedModel folder, or module:callable"
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="Model", help="recipe TOML with any of these options (default: ./edgekit.toml if present)"
        ),
    ] = None,
    target: Annotated[
        str,
        typer.Option(
            rich_help_panel="Target and device",
            help="target name (see `edgekit targets`) or .toml path; several, comma-separated: OUT/<target>/ each",
        ),
    ] = "arm64",
    calib: Annotated[
        Path | None, typer.Option(rich_help_panel="Data", help=".npz/.npy or a folder of images (real data)")
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option("--eval", rich_help_panel="Data", help="held-out .npz, with 'labels' for task accuracy"),
    ] = None,
    task_output: Annotated[
        str | None,
        typer.Option(
            rich_help_panel="Data",
            help="the output that carries classes (name or index; default output 0): top-1 agreement, labels and "
            "budgets use it; a (samples, steps, classes) output gets per-step agreement",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(rich_help_panel="Output", help="output folder (replaced atomically)")] = Path(
        "build"
    ),
    weights: Annotated[
        Path | None, typer.Option(rich_help_panel="Model", help="state dict for module:callable (weights_only)")
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(rich_help_panel="Target and device", help="fp32|fp16|int8, comma-separated; default from target"),
    ] = None,
    backends: Annotated[
        str | None,
        typer.Option(rich_help_panel="Target and device", help="tflite,onnxruntime,openvino,tvm; default from target"),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            rich_help_panel="Target and device",
            help="where builds run: host | emulated | ssh://user@host[:port][?key=…] | adb[://SERIAL] | "
            "rpc://TRACKER:PORT/KEY (boards of a TVM RPC farm)",
        ),
    ] = None,
    boards: Annotated[
        int,
        typer.Option(
            rich_help_panel="Target and device",
            help="with --device rpc://…: run each build on this many boards at once (per-board rows, median, spread)",
        ),
    ] = 1,
    input_shape: Annotated[
        list[str] | None, typer.Option(rich_help_panel="Model", help="[NAME:]1x3x224x224[:dtype], repeatable")
    ] = None,
    mean: Annotated[str, typer.Option(rich_help_panel="Data", help="image folders: per-channel pixel mean")] = "0",
    std: Annotated[str, typer.Option(rich_help_panel="Data", help="image folders: per-channel pixel std")] = "255",
    ten_crop: Annotated[bool, typer.Option(rich_help_panel="Data", help="image folders: ten crops per image")] = False,
    calib_size: Annotated[int, typer.Option(rich_help_panel="Data", help="calibration samples")] = 100,
    eval_size: Annotated[int, typer.Option(rich_help_panel="Data", help="held-out samples")] = 100,
    runs: Annotated[
        int, typer.Option(rich_help_panel="Target and device", help="timed runs per build (after warm-up)")
    ] = 50,
    warmup: Annotated[int, typer.Option(rich_help_panel="Target and device", help="warm-up runs")] = 10,
    threads: Annotated[
        int, typer.Option(rich_help_panel="Target and device", help="threads per runtime")
    ] = os.cpu_count() or 1,
    jobs: Annotated[
        int,
        typer.Option(
            rich_help_panel="Target and device",
            help="builds converted at once (default: the cores); device checks always run one at a time",
        ),
    ] = os.cpu_count() or 1,
    min_top1_agreement: Annotated[
        float | None, typer.Option(rich_help_panel="Budgets and CI", help="budget: fraction 0–1")
    ] = None,
    min_cosine: Annotated[
        float | None, typer.Option(rich_help_panel="Budgets and CI", help="budget: output cosine")
    ] = None,
    max_accuracy_drop: Annotated[
        float | None, typer.Option(rich_help_panel="Budgets and CI", help="budget: task-accuracy points")
    ] = None,
    max_latency_ms: Annotated[
        float | None, typer.Option(rich_help_panel="Budgets and CI", help="budget: p50 ms on the device")
    ] = None,
    max_size_mb: Annotated[
        float | None, typer.Option(rich_help_panel="Budgets and CI", help="budget: deployable artifact size in MB")
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            rich_help_panel="Budgets and CI",
            help="time limit in seconds per build and per device check (default: builds 1800 s, checks "
            "20× the original's time for the same inferences, ×400 emulated, at least 300 s); a build past it "
            "fails with the reason and the rest of the report is written",
        ),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="Budgets and CI",
            help="an earlier report.json: accuracy/latency/size regressions fail the run",
        ),
    ] = None,
    baseline_accuracy_pt: Annotated[
        float, typer.Option(rich_help_panel="Budgets and CI", help="baseline: allowed accuracy loss, points")
    ] = 0.5,
    baseline_latency_ratio: Annotated[
        float, typer.Option(rich_help_panel="Budgets and CI", help="baseline: allowed p50 growth factor")
    ] = 1.25,
    baseline_size_ratio: Annotated[
        float, typer.Option(rich_help_panel="Budgets and CI", help="baseline: allowed size growth factor")
    ] = 1.05,
    junit: Annotated[
        Path | None,
        typer.Option(rich_help_panel="Budgets and CI", help="write JUnit XML here (one test case per build)"),
    ] = None,
    quiet: Annotated[
        bool, typer.Option(rich_help_panel="Output", help="no progress and no table; the exit code tells")
    ] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            rich_help_panel="Output",
            help="show the libraries' warnings and the converters' output (always kept in OUT/logs)",
        ),
    ] = False,
    cache: Annotated[
        bool,
        typer.Option(
            rich_help_panel="Output", help="reuse the builds of an unchanged conversion (see `edgekit cache`)"
        ),
    ] = True,
    recheck: Annotated[
        bool,
        typer.Option(
            rich_help_panel="Output",
            help="run builds reused from the cache on the device again (default: reuse their measurement when "
            "the device, data and settings are unchanged)",
        ),
    ] = False,
    layer_diff: Annotated[
        bool,
        typer.Option(
            rich_help_panel="Output",
            help="per-layer error of the int8/fp16 builds (edgekit diff) in the report and its plots",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", rich_help_panel="Output", help="print the report as JSON on stdout (no table)")
    ] = False,
    prune: Annotated[
        str | None,
        typer.Option(
            rich_help_panel="Pruning", help="structured:RATIO (removes channels) or unstructured:RATIO (zeros weights)"
        ),
    ] = None,
    prune_importance: Annotated[
        str, typer.Option(rich_help_panel="Pruning", help="l1 | l2 | bn | taylor (needs --train)")
    ] = "l2",
    prune_ignore: Annotated[
        list[str] | None, typer.Option(rich_help_panel="Pruning", help="module name regex never pruned, repeatable")
    ] = None,
    prune_round_to: Annotated[
        int, typer.Option(rich_help_panel="Pruning", help="keep channel counts multiples of this")
    ] = 1,
    recover_steps: Annotated[
        int, typer.Option(rich_help_panel="Pruning", help="self-distillation steps after pruning (0: BN only)")
    ] = 0,
    recover_lr: Annotated[
        float, typer.Option(rich_help_panel="Pruning", help="learning rate of the recovery steps")
    ] = 1e-3,
    train: Annotated[
        Path | None,
        typer.Option(rich_help_panel="Pruning", help="labelled .npz: recovery also fine-tunes on the labels"),
    ] = None,
    calib_method: Annotated[
        str,
        typer.Option(
            rich_help_panel="Quantization",
            help="int8 calibration: auto (NNCF's min/max or histogram ranges, the closer on the calibration set) "
            "| minmax | entropy | percentile",
        ),
    ] = "auto",
    per_tensor: Annotated[
        bool, typer.Option(rich_help_panel="Quantization", help="int8 weights per tensor instead of per channel")
    ] = False,
    symmetric_activations: Annotated[
        bool, typer.Option(rich_help_panel="Quantization", help="symmetric int8 activations (zero point 0)")
    ] = False,
    int8_mode: Annotated[
        str,
        typer.Option(
            rich_help_panel="Quantization", help="auto (dynamic for MatMul models with token inputs) | static | dynamic"
        ),
    ] = "auto",
    quantizer: Annotated[
        str,
        typer.Option(
            rich_help_panel="Quantization",
            help="static int8: nncf (NNCF PTQ with bias correction) | ort (ONNX Runtime quantize_static)",
        ),
    ] = "nncf",
    bias_correction: Annotated[
        str,
        typer.Option(rich_help_panel="Quantization", help="NNCF bias correction: full | fast | none"),
    ] = "full",
    backend_option: Annotated[
        list[str] | None,
        typer.Option(
            rich_help_panel="Backend options",
            help="BACKEND.KEY=VALUE (JSON value), e.g. coreml.palettize=4, repeatable",
        ),
    ] = None,
    hls_config: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="Backend options",
            help="JSON merged into hls4ml's config, e.g. per-layer Precision/ReuseFactor",
        ),
    ] = None,
    tune: Annotated[
        int,
        typer.Option(
            rich_help_panel="Backend options",
            help="TVM: MetaSchedule trials per workload without a tuning record (0: untuned); measured on this "
            "machine, or on the boards of --device rpc://…",
        ),
    ] = 0,
    tune_minutes: Annotated[
        float | None,
        typer.Option(rich_help_panel="Backend options", help="TVM: the search's time budget in minutes (default 20)"),
    ] = None,
    tuning_records: Annotated[
        Path | None,
        typer.Option(
            rich_help_panel="Backend options",
            help="TVM: tuning records folder to reuse and extend (share it with CI/teammates); default: the cache",
        ),
    ] = None,
    trust_model: Annotated[
        bool,
        typer.Option(
            rich_help_panel="Model",
            help="load formats that can run code (TorchScript, pickled .pt2 parts): trusted files only",
        ),
    ] = False,
) -> None:
    """Convert MODEL for TARGET, run every build, check it against the original and write a report.

    Every option can also come from a recipe (--config FILE, or edgekit.toml in the current folder);
    options given on the command line win.
    """
    with _guarded():
        v = SimpleNamespace(**apply_recipe(ctx, config))
        if not v.model:
            raise EdgekitError("no model given", "pass MODEL, or set model = … in edgekit.toml / --config")
        m, s = _per_channel(v.mean, "--mean"), _per_channel(v.std, "--std")
        shapes = parse_input_shapes(v.input_shape or [])
        pruning = (
            PruneConfig.parse(
                v.prune,
                importance=v.prune_importance,
                ignore=tuple(v.prune_ignore or ()),
                round_to=v.prune_round_to,
                recover_steps=v.recover_steps,
                recover_lr=v.recover_lr,
            )
            if v.prune
            else None
        )
        options = parse_backend_options(v.backend_option or [], v.hls_config)
        quant = QuantConfig(
            v.calib_method, not v.per_tensor, v.symmetric_activations, v.int8_mode, v.quantizer, v.bias_correction
        )
    _execute(
        ConvertOptions(
            model=v.model,
            target=v.target,
            out=v.out,
            calib=v.calib,
            eval=v.eval_data,
            weights=v.weights,
            precisions=_csv(v.precision),
            backends=_csv(v.backends),
            device=v.device,
            boards=v.boards,
            tune_trials=v.tune,
            tune_minutes=v.tune_minutes,
            tuning_records=v.tuning_records,
            input_shapes=shapes or None,
            image=ImagePreprocess(m, s, v.ten_crop),
            calib_size=v.calib_size,
            eval_size=v.eval_size,
            runs=v.runs,
            warmup=v.warmup,
            threads=v.threads,
            jobs=v.jobs,
            timeout_s=v.timeout,
            budgets=Budgets(v.min_top1_agreement, v.min_cosine, v.max_accuracy_drop, v.max_latency_ms, v.max_size_mb),
            prune=pruning,
            train=v.train,
            backend_options=options,
            quant=quant,
            trust_model=v.trust_model,
            hls_config=v.hls_config,
            baseline=v.baseline,
            baseline_tolerances=Tolerances(
                v.baseline_accuracy_pt, 0.001, v.baseline_latency_ratio, v.baseline_size_ratio
            ),
            recipe=v.recipe,
            cache=v.cache,
            recheck=v.recheck,
            layer_diff=v.layer_diff,
            task_output=v.task_output,
        ),
        v.junit,
        v.quiet,
        v.as_json,
        v.verbose,
    )


@app.command()
def demo(
    target: Annotated[str, typer.Option(help="target name")] = "arm64",
    out: Annotated[Path, typer.Option(help="output folder")] = Path("build/demo"),
    precision: Annotated[str | None, typer.Option(help="fp32|fp16|int8, comma-separated")] = None,
    device: Annotated[str | None, typer.Option(help="host | emulated; default from target")] = None,
    runs: Annotated[int, typer.Option(help="timed runs per build")] = 50,
    held_out: Annotated[
        str,
        typer.Option(
            help="auto: the 240 prepared photos (`edgekit photos prepare`) when there, else the bundled crops | "
            "photos | crops"
        ),
    ] = "auto",
) -> None:
    """Run the whole pipeline on the bundled EfficientNet-Lite0 (ImageNet weights) and real photos."""
    from edgekit.demo import demo_options, held_out_photos

    with _guarded():
        if held_out == "auto" and not held_out_photos(held_out):
            err.print(
                "held out: 66 ten-crops of 7 bundled photos (mostly near-ties); `edgekit photos prepare` once gives "
                "the 240-photo set",
                highlight=False,
            )
        opts = demo_options(target, out, held_out, precisions=_csv(precision), device=device, runs=runs)
    _execute(opts)


@app.command("prune-scan")
def prune_scan_cmd(
    model: Annotated[str, typer.Argument(help="PyTorch module:callable (or file.py:callable)")],
    calib: Annotated[Path, typer.Option(help=".npz/.npy or a folder of images (real data)")],
    eval_data: Annotated[Path | None, typer.Option("--eval", help="held-out .npz, with 'labels'")] = None,
    weights: Annotated[Path | None, typer.Option(help="state dict for module:callable")] = None,
    target: Annotated[str, typer.Option(help="target name or .toml path")] = "host",
    device: Annotated[str | None, typer.Option(help="host | emulated | ssh://…; default from target")] = None,
    backends: Annotated[str | None, typer.Option(help="builds to time; default onnxruntime")] = "onnxruntime",
    precision: Annotated[str, typer.Option(help="fp32|fp16|int8")] = "int8",
    kind: Annotated[str, typer.Option(help="structured | unstructured")] = "structured",
    ratios: Annotated[str, typer.Option(help="pruning ratios, comma-separated")] = "0.1,0.2,0.3,0.4,0.5",
    importance: Annotated[str, typer.Option(help="l1 | l2 | bn | taylor")] = "l2",
    recover_steps: Annotated[int, typer.Option(help="self-distillation steps per ratio")] = 0,
    recover_lr: Annotated[float, typer.Option(help="learning rate of the recovery steps")] = 1e-3,
    train: Annotated[Path | None, typer.Option(help="labelled .npz for recovery fine-tuning")] = None,
    calib_size: Annotated[int, typer.Option(help="calibration samples")] = 100,
    eval_size: Annotated[int, typer.Option(help="held-out samples")] = 100,
    runs: Annotated[int, typer.Option(help="timed runs per build")] = 50,
    out: Annotated[Path, typer.Option(help="output folder (replaced atomically)")] = Path("build/prune-scan"),
) -> None:
    """Prune at several ratios, convert and time each, and tabulate accuracy vs latency (scan.md, scan.png)."""
    from edgekit.scan import prune_scan

    logging.getLogger("nncf").setLevel(logging.ERROR)
    with _guarded():
        values = _floats(ratios, "--ratios")
        config = PruneConfig(kind, 0.5, importance=importance, recover_steps=recover_steps, recover_lr=recover_lr)
        opts = ConvertOptions(
            model=model,
            target=target,
            out=out,
            calib=calib,
            eval=eval_data,
            weights=weights,
            precisions=_csv(precision),
            backends=_csv(backends),
            device=device,
            calib_size=calib_size,
            eval_size=eval_size,
            runs=runs,
            train=train,
        )
        with RichProgress(Console(stderr=True, log_path=False)) as progress:
            scan = prune_scan(opts, config, values, log=progress)
    wide_console(200).print(Markdown((Path(out) / "scan.md").read_text()))
    err.print(f"scan: {Path(out) / 'scan.md'}, plot: {Path(out) / 'scan.png'}")
    failed = any(b["status"] == "failed" for p in scan["points"] for b in p["builds"])
    raise typer.Exit(1 if failed else 0)


@app.command()
def device(
    action: Annotated[str, typer.Argument(help="prepare: assemble (or find) the cached emulated device")],
    target: Annotated[str, typer.Option(help="target whose emulated device to prepare")] = "arm64",
) -> None:
    """Manage the emulated ARM devices (cached under $EDGEKIT_CACHE or ~/.cache/edgekit)."""
    from edgekit import emulator
    from edgekit.converters import runtime_modules

    if action != "prepare":
        raise _usage_error(EdgekitError(f"unknown action '{action}'", "use `edgekit device prepare`"))
    failed = 0
    with _guarded():
        images = emulator.images_for(load_target(target).arch)
        for image in images:
            try:
                root = emulator.prepare(image, log=err.log)
                have = sorted(set(runtime_modules()) & emulator.installed_modules(root))
                Console().print(f"emulated {image.name} userland ready ({', '.join(have)}): {root}")
            except EdgekitError as exc:
                _print_error(exc)
                failed += 1
    raise typer.Exit(1 if failed else 0)


@app.command()
def profile(
    build: Annotated[Path, typer.Argument(help="a build folder, e.g. build/tflite_int8")],
    inputs: Annotated[Path, typer.Option(help=".npz with one array per input (samples on axis 0)")],
    device: Annotated[
        str | None,
        typer.Option(help="host | emulated | ssh://… | adb | rpc://TRACKER:PORT/KEY; default from the target"),
    ] = None,
    boards: Annotated[int, typer.Option(help="with --device rpc://…: profile on this many boards at once")] = 1,
    threads: Annotated[int, typer.Option(help="threads")] = 1,
    top: Annotated[int, typer.Option(help="rows to show")] = 15,
    out: Annotated[Path | None, typer.Option(help="write the whole profile as JSON here")] = None,
) -> None:
    """Per-op latency profile of one build on its device (ONNX Runtime profiler, OpenVINO counters)."""
    from rich.table import Table

    from edgekit.profiling import profile_build

    with _guarded():
        if out is not None:
            check_result_file(out, "--out", (inputs,))
        result = profile_build(build, inputs, device, threads, boards=boards)
        if out is not None:
            out.write_text(json.dumps(result, indent=2))
    lat = result["latency_ms"]
    kind = "emulated, compare builds only" if result["emulated"] else "measured"
    console = Console()
    console.print(
        f"{result['backend']} on {result['device']} ({result['runtime']}, {result['threads']} thread(s)): "
        f"p50 {lat['p50']:.3f} ms, p90 {lat['p90']:.3f} ms ({kind})"
    )
    if result.get("boards"):
        from edgekit.report import farm_lines

        for line in farm_lines(result["boards"]):
            console.print(line, highlight=False, markup=False)
    prof = result["profile"]
    if "unavailable" in prof:
        console.print(f"[yellow]no per-op profile:[/] {prof['unavailable']}")
        return
    total = sum(op["us"] for op in prof["ops"]) or 1.0
    table = Table(title=f"per-op time ({prof['tool']}, mean of {prof['repeats']} inferences)")
    for col in ("op", "type", "µs", "%"):
        table.add_column(col, justify="right" if col in ("µs", "%") else "left")
    for op in prof["ops"][:top]:
        table.add_row(op["name"], op["type"], f"{op['us']:.1f}", f"{100 * op['us'] / total:.1f}")
    console.print(table)


@app.command("diff")
def diff_cmd(
    original: Annotated[Path, typer.Argument(help="the original's ONNX graph, or the folder edgekit convert wrote")],
    build: Annotated[Path, typer.Argument(help="a build folder, e.g. build/onnxruntime_int8")],
    inputs: Annotated[Path, typer.Option(help=".npz with one array per input (samples on axis 0)")],
    sample: Annotated[int, typer.Option(help="which sample of --inputs")] = 0,
    top: Annotated[int, typer.Option(help="layers to show (worst SNR first)")] = 15,
    out: Annotated[Path | None, typer.Option(help="write every layer as JSON here")] = None,
    plot: Annotated[Path | None, typer.Option(help="write the per-layer SNR plot (PNG) here")] = None,
) -> None:
    """Find the first layer where a build diverges from the original (per-layer cosine, max-abs, SNR)."""
    from rich.table import Table

    from edgekit import diff

    with _guarded():
        for path, flag in ((out, "--out"), (plot, "--plot")):
            if path is not None:
                check_result_file(path, flag, (inputs, diff.original_graph(original)))
        result = diff.compare_build(original, build, inputs, sample)
        if out:
            out.write_text(json.dumps(result, indent=2))
        if plot:
            diff.plot(result, plot)
    console = wide_console(200)
    table = Table(title=f"{result['backend']} {result['precision']} vs original ({result['compared_through']})")
    for col in ("layer", "op", "params", "cosine", "max abs", "SNR dB", "jump dB"):
        table.add_column(col, justify="left" if col in ("layer", "op", "params") else "right")
    for row in sorted(result["rows"], key=lambda r: r["snr_db"])[:top]:
        jump = "—" if row["jump_db"] is None else f"{row['jump_db']:.1f}"
        cells = [f"{row['cosine']:.5f}", f"{row['max_abs']:.3g}", f"{row['snr_db']:.1f}", jump]
        table.add_row(row["node"], row["op"], ", ".join(row["params"]), *cells)
    console.print(table)
    for key, what in (("first_jump", "first layer whose error jumps"), ("largest_jump", "largest jump")):
        row = result[key]
        if row:
            console.print(
                f"{what}: [bold]{row['node']}[/] ({row['op']}{', ' + row['params'][0] if row['params'] else ''}) "
                f"SNR {row['snr_db']:.1f} dB, cosine {row['cosine']:.5f}"
            )
    if result["first_jump"] is None:
        console.print(f"no layer loses ≥ {result['jump_threshold_db']} dB on its own")


@app.command("inspect")
def inspect_cmd(
    model: Annotated[str, typer.Argument(help="the model, as for convert")],
    target: Annotated[str, typer.Option(help="target name or .toml path: its backends are checked")] = "host",
    input_shape: Annotated[list[str] | None, typer.Option(help="[NAME:]1x3x224x224[:dtype], repeatable")] = None,
    weights: Annotated[Path | None, typer.Option(help="state dict for module:callable (weights_only)")] = None,
    trust_model: Annotated[bool, typer.Option(help="load formats that can run code (trusted files only)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the findings as JSON")] = False,
) -> None:
    """Before converting: inputs/outputs, dynamic dimensions, MACs, and what each backend cannot do (exit 1 if
    convert would fail)."""
    from rich.table import Table

    from edgekit.inspect import inspect_model

    with _guarded():
        shapes = parse_input_shapes(input_shape or [])
        result = inspect_model(model, target, shapes or None, weights, trust_model)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        raise typer.Exit(1 if result["would_fail"] else 0)
    console = wide_console(200)
    table = Table(title=f"{result['model']} ({result['framework']}) for {result['target']}")
    for col in ("", "name", "shape", "dtype"):
        table.add_column(col)
    declared = {i["name"]: i["shape"] for i in result["declared_inputs"]}
    for kind, rows in (("input", result["inputs"]), ("output", result["outputs"])):
        for row in rows:
            shape = "x".join(map(str, row["shape"]))
            if kind == "input" and declared.get(row["name"], row["shape"]) != row["shape"]:
                shape += f" (declared {declared[row['name']]})"
            table.add_row(kind, row["name"], shape, row["dtype"])
    console.print(table)
    macs = "?" if result["macs"] is None else f"{result['macs'] / 1e6:.2f} M"
    params = "?" if result["params"] is None else f"{result['params'] / 1e6:.3f} M"
    ops = ", ".join(f"{op} {n}" for op, n in list(result["ops"].items())[:12])
    console.print(f"MACs {macs}, parameters {params}; operators: {ops}")
    colour = {"error": "bold red", "warning": "yellow", "info": "cyan"}
    for f in result["findings"]:
        where = f"{f['backend']}: " if f["backend"] else ""
        console.print(f"[{colour[f['severity']]}]{f['severity']}[/] {where}{f['problem']} — fix: {f['fix']}")
    verdict = "convert would fail (see the errors above)" if result["would_fail"] else "no blocking problem found"
    console.print(f"{'[bold red]' if result['would_fail'] else '[green]'}{verdict}[/]")
    raise typer.Exit(1 if result["would_fail"] else 0)


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="print the checks as JSON")] = False) -> None:
    """Which optional parts are present (emulators, cross compilers, devices, converters) and how to add each."""
    from rich.table import Table

    from edgekit.doctor import checks

    found = checks()
    if as_json:
        typer.echo(json.dumps([c.to_json() for c in found], indent=2))
        return
    table = Table(title="edgekit doctor")
    for col in ("", "part", "needed for", "found", "to add it"):
        table.add_column(col)
    for c in found:
        mark = "[green]✓[/]" if c.present else "[yellow]–[/]"
        table.add_row(mark, c.name, c.needed_for, c.detail, "" if c.present else c.fix)
    wide_console(200).print(table)


@app.command()
def photos(
    action: Annotated[str, typer.Argument(help="prepare: fetch (or find) the held-out photo set")],
) -> None:
    """The held-out photo set of `edgekit demo` and the benchmarks (cached; licences beside it)."""
    from edgekit.photos import prepare

    if action != "prepare":
        raise _usage_error(EdgekitError(f"unknown action '{action}'", "use `edgekit photos prepare`"))
    with _guarded():
        folder = prepare(log=err.log)
    Console().print(f"photos ready: {folder}", highlight=False)


cache_app = typer.Typer(
    no_args_is_help=True, help="The conversion cache: builds reused by an unchanged re-run (see --no-cache)."
)
app.add_typer(cache_app, name="cache")


@cache_app.command("info")
def cache_info() -> None:
    """Where the cache is, how many builds it holds and their size."""
    from edgekit.cache import BuildCache, cache_dir, limit_bytes

    root = cache_dir()
    if root is None:
        Console().print("the conversion cache is off (EDGEKIT_BUILD_CACHE=off)")
        return
    entries = BuildCache(root).entries()
    size = sum(e[1] for e in entries)
    Console().print(
        f"{root}: {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}, {size / 1e6:.1f} MB "
        f"(least recently used dropped beyond {limit_bytes() / 1e9:g} GB, EDGEKIT_BUILD_CACHE_GB)",
        highlight=False,
    )


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every cached build (the emulated devices are kept)."""
    from edgekit.cache import BuildCache, cache_dir

    root = cache_dir()
    if root is None:
        Console().print("the conversion cache is off (EDGEKIT_BUILD_CACHE=off): nothing to clear")
        return
    count, size = BuildCache(root).clear()
    Console().print(f"removed {count} cached build(s), {size / 1e6:.1f} MB, from {root}", highlight=False)


farm_app = typer.Typer(
    no_args_is_help=True,
    help="A board farm through TVM's RPC tracker: --device rpc://TRACKER:PORT/KEY [--boards N].",
)
app.add_typer(farm_app, name="farm")


@farm_app.command("up")
def farm_up(
    key: Annotated[str, typer.Option(help="the key the boards register under")] = "local",
    boards: Annotated[int, typer.Option(help="board servers on this machine")] = 2,
    emulated: Annotated[int, typer.Option(help="boards inside the emulated arm64 device (timings: emulated)")] = 0,
    port: Annotated[int | None, typer.Option(help="tracker port (default: a free one)")] = None,
) -> None:
    """Start a tracker on 127.0.0.1 with local boards and keep it up until Ctrl-C (for trying a farm, and CI)."""
    import time

    from edgekit import procs
    from edgekit.farm import Farm

    with _guarded(), procs.signals_as_interrupt():
        farm = Farm(key, boards, emulated, port, log=err.log)
        url = farm.start()  # on failure it stops what it started (keeping the logs its error names)
        Console().print(f"farm up: --device {url} (up to --boards {boards + emulated}); Ctrl-C stops it")
        died = None
        try:
            while not died:
                time.sleep(1)
                died = farm.died()
        except KeyboardInterrupt:
            return
        finally:
            farm.stop(keep_logs=died is not None)
        raise EdgekitError(f"the farm stopped: {died}", f"see the logs in {farm.logs}")


@farm_app.command("board")
def farm_board(
    tracker: Annotated[str, typer.Option(help="HOST:PORT of the tracker")],
    key: Annotated[str, typer.Option(help="the device class, e.g. rpi5")],
    name: Annotated[str, typer.Option(help="this board's name in reports (default: host:port)")] = "",
    host: Annotated[str, typer.Option(help="address to listen on")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="first port to try")] = 9090,
) -> None:
    """Serve this machine as a board (boards without edgekit run edgekit/runtime/board_server.py: TVM runtime only)."""
    from edgekit.farm import FarmAddress, tracker_summary
    from edgekit.runtime import board_server

    with _guarded():
        address = FarmAddress.parse(f"rpc://{tracker}/{key}")
        tracker_summary(address.host, address.port)  # one line when no tracker answers there
    argv = ["--tracker", tracker, "--key", key, "--host", host, "--port", str(port)]
    argv += ["--name", name] if name else []
    raise typer.Exit(board_server.main(argv))


@farm_app.command("status")
def farm_status(url: Annotated[str, typer.Argument(help="rpc://TRACKER:PORT[/KEY]")]) -> None:
    """The boards registered with a tracker, by key, and how many are free."""
    from urllib.parse import urlsplit

    from edgekit.farm import FarmAddress, tracker_summary

    with _guarded():
        address = FarmAddress.parse(url if urlsplit(url).path.strip("/") else url.rstrip("/") + "/any")
        summary = tracker_summary(address.host, address.port)
    keys: dict[str, list[str]] = {}
    for server in summary.get("server_info", []):
        keys.setdefault(server["key"].removeprefix("server:"), []).append(f"{server['addr'][0]}:{server['addr'][1]}")
    queue = summary.get("queue_info", {})
    for key, addrs in sorted(keys.items()):
        free = queue.get(key, {}).get("free", 0)
        Console().print(f"{key}: {len(addrs)} board(s), {free} free — {', '.join(sorted(addrs))}", highlight=False)
    if not keys:
        Console().print(f"no boards are registered with the tracker at {address.host}:{address.port}")


@app.command()
def targets() -> None:
    """List the targets edgekit ships."""
    from rich.table import Table

    table = Table(title="edgekit targets")
    for col in ("name", "platform", "triple", "cpu", "backends", "default precision", "runner", "description"):
        table.add_column(col)
    with _guarded():
        found = list_targets()
    for t in found:
        table.add_row(
            t.name,
            t.platform,
            t.triple,
            t.cpu or "native",
            ", ".join(t.backends),
            ", ".join(t.default_precisions),
            t.runner,
            t.description,
        )
    wide_console(200).print(table)


@app.command()
def backends() -> None:
    """List the backends edgekit knows (its own and those in $EDGEKIT_BACKENDS) and what each can do."""
    from rich.table import Table

    from edgekit.converters import backend_names, backend_spec

    with _guarded():
        specs = [backend_spec(name) for name in backend_names()]
    table = Table(title="edgekit backends")
    for col in ("name", "precisions", "builds from", "device runtime", "per-op profile", "layer diff", "folder"):
        table.add_column(col)
    for b in specs:
        source = b.source + (" (TensorFlow sources natively)" if b.tf_native else "")
        runtime = " or ".join(b.runtime_modules)
        if b.host_only:
            runtime = "host only" + (f" ({runtime})" if runtime else "")
        table.add_row(
            f"{b.name}\n[dim]{b.summary}[/]",
            ", ".join(b.precisions) + (" (shared int8 graph)" if b.int8_graph else ""),
            source,
            runtime,
            "no" if b.profiler else "yes",
            "no" if b.layer_diff else "yes",
            str(b.folder),
        )
    wide_console(200).print(table)


if __name__ == "__main__":
    app()
