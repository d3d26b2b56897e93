"""The convert pipeline: load → ONNX (checked) → quantize → build per backend → run on the device → report.

Everything is written to a private staging folder beside the output folder and moved into place at
the end, so a run that stops on bad input leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import io
import json
import numbers
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekit import onnx_hub
from edgekit.build_worker import job_to_json
from edgekit.cache import BuildCache, arrays_digest, cache_dir, data_digest, file_digest, make_key, source_digest
from edgekit.converters import BuildContext, backend_spec, get_converter
from edgekit.data import (
    Dataset,
    ImagePreprocess,
    TensorSpec,
    check_input_shape,
    load_dataset,
    specs_from_dataset,
)
from edgekit.errors import EdgekitError, one_line
from edgekit.gates import Tolerances, against_baseline, load_baseline
from edgekit.int8 import quantize_static
from edgekit.metrics import agreement, compare, finite_metrics, latency_stats
from edgekit.procs import run as run_process
from edgekit.progress import Advance, Progress, as_progress
from edgekit.prune import PruneConfig
from edgekit.recommend import flag_degraded, recommend
from edgekit.runners import Runner, RunnerError, RunnerTimeout, RunSpec, get_runner
from edgekit.safety import Staging, check_output_folder, file_or_folder, regular_file
from edgekit.source import MODEL_SUFFIXES, SourceModel, load_model
from edgekit.target import PRECISIONS, Target, load_target

ONNX_COSINE_FLOOR = 0.9999
BUILD_LIMIT_S = 1800.0  # one conversion, unless --timeout says otherwise
# A device check may take this many times the original's latency per inference (a slower build is not worth
# waiting for), emulated devices 400× more (qemu user mode is up to 400× slower), and never less than MIN.
CHECK_SLOWDOWN, EMULATION_SLOWDOWN, MIN_CHECK_S = 20.0, 400.0, 300.0
SCHEMA_VERSION = 2  # report.json: 2 added schema_version and build manifests that carry their target and graph


@dataclass(frozen=True)
class Budgets:
    """Gates for CI: a build that misses one makes the run exit non-zero."""

    min_top1_agreement: float | None = None
    min_cosine: float | None = None
    max_accuracy_drop: float | None = None  # points of task accuracy (labels given), else of top-1 agreement
    max_latency_ms: float | None = None  # p50 on the device that ran the build
    max_size_mb: float | None = None  # the deployable artifact (model, weights, target library)


@dataclass
class ConvertOptions:
    """Everything ``edgekit convert`` takes; the CLI is a thin layer over this."""

    model: str
    target: str = "arm64"
    out: Path = Path("build")
    calib: Path | None = None
    eval: Path | None = None
    weights: Path | None = None
    precisions: tuple[str, ...] | None = None
    backends: tuple[str, ...] | None = None
    device: str | None = None
    boards: int = 1  # with --device rpc://…: run every build on this many boards of the farm at once
    input_shapes: dict[str, tuple[tuple[int, ...], str]] | None = None
    image: ImagePreprocess = field(default_factory=ImagePreprocess)
    eval_image: ImagePreprocess | None = None  # how an --eval image folder is read (None: like --calib)
    calib_size: int = 100
    eval_size: int = 100
    warmup: int = 10
    runs: int = 50
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)  # builds converted at once (each its own process)
    budgets: Budgets = field(default_factory=Budgets)
    # Seconds per build and per device check; None: builds BUILD_LIMIT_S, checks sized from the original.
    timeout_s: float | None = None
    prune: PruneConfig | None = None
    train: Path | None = None  # labelled data for pruning recovery (fine-tuning) and Taylor importance
    backend_options: dict[str, dict] = field(default_factory=dict)  # backend → overrides, e.g. hls4ml's config
    quant: onnx_hub.QuantConfig = field(default_factory=onnx_hub.QuantConfig)
    trust_model: bool = False  # load model formats that can run code (TorchScript, pickled parts of .pt2)
    hls_config: Path | None = None  # the file --hls-config was read from (an input --out must not replace)
    baseline: Path | None = None  # an earlier report.json: regressions against it fail the run (edgekit.gates)
    baseline_tolerances: Tolerances = field(default_factory=Tolerances)
    recipe: dict | None = None  # the recipe file and the options it supplied (recorded in the report)
    cache: bool = True  # reuse builds of an unchanged conversion (edgekit.cache)
    recheck: bool = False  # run reused builds on the device again instead of reusing their measurement
    layer_diff: bool = False  # per-layer error of every lossy build (edgekit.diff), in the report and its plots
    task_output: str | None = None  # the output carrying classes (name or index); default: output 0 if (N, C)
    tune_trials: int = 0  # TVM: MetaSchedule trials per workload that has no tuning record (0: untuned)
    tune_minutes: float | None = None  # TVM: the search's time budget (also added to the build's time limit)
    tuning_records: Path | None = None  # TVM: the records folder (default: under $EDGEKIT_CACHE), shareable

    def input_paths(self) -> list[Path]:
        """Every file or folder this run reads: ``--out`` must never contain one of them."""
        model = self.model.rpartition(":")[0] if ":" in self.model and not Path(self.model).exists() else self.model
        paths = [self.calib, self.eval, self.weights, self.train, self.hls_config, self.baseline]
        paths.append(self.tuning_records)
        if model.endswith(".py") or Path(model).exists():
            paths.append(Path(model))
        paths += [Path(t) for t in self.target.split(",") if t.strip().endswith(".toml")]
        return [Path(p) for p in paths if p is not None]

    def validate(self) -> None:
        """Refuse impossible settings before any work (one line naming the option and a fix)."""
        counts = (("--runs", self.runs, 1), ("--warmup", self.warmup, 0), ("--threads", self.threads, 1))
        counts += (("--jobs", self.jobs, 1),)
        counts += (("--calib-size", self.calib_size, 1), ("--eval-size", self.eval_size, 1))
        for flag, value, low in counts:
            if not isinstance(value, numbers.Integral) or value < low:
                raise EdgekitError(f"{flag} {value} must be an integer ≥ {low}", f"pass {flag} {max(low, 1)} or more")
        if self.boards < 1:
            raise EdgekitError(f"--boards {self.boards} must be ≥ 1", "pass --boards 1 or more")
        if not isinstance(self.tune_trials, numbers.Integral) or self.tune_trials < 0:
            raise EdgekitError(f"--tune {self.tune_trials} must be an integer ≥ 0", "pass e.g. --tune 32")
        if self.tune_minutes is not None and not self.tune_minutes > 0:
            raise EdgekitError(f"--tune-minutes {self.tune_minutes} must be positive", "pass e.g. --tune-minutes 20")
        if self.tuning_records is not None and self.tuning_records.exists() and not self.tuning_records.is_dir():
            raise EdgekitError(
                f"--tuning-records {self.tuning_records} is a file", "pass a folder (it is created if missing)"
            )
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise EdgekitError(f"timeout {self.timeout_s} s must be positive", "pass a time limit in seconds")
        b = self.budgets
        ranges = (
            ("--min-top1-agreement", b.min_top1_agreement, 0.0, 1.0, "a fraction, e.g. 0.95"),
            ("--min-cosine", b.min_cosine, -1.0, 1.0, "a cosine in [-1, 1], e.g. 0.99"),
            ("--max-accuracy-drop", b.max_accuracy_drop, 0.0, 100.0, "points in [0, 100], e.g. 1"),
            ("--max-latency-ms", b.max_latency_ms, 0.0, float("inf"), "a positive time in ms, e.g. 20"),
            ("--max-size-mb", b.max_size_mb, 0.0, float("inf"), "a positive size in MB, e.g. 5"),
        )
        for flag, value, low, high, what in ranges:
            if value is None:
                continue
            positive = flag not in ("--max-latency-ms", "--max-size-mb") or value > 0
            if not (low <= value <= high and positive):
                raise EdgekitError(f"{flag} {value} is impossible", f"give {what}")
        image = self.image
        if len(image.mean) != 3 or len(image.std) != 3:
            raise EdgekitError(
                "--mean/--std need 1 or 3 values", "write e.g. --mean 127 --std 128 or --mean 124,116,104"
            )
        if not all(np.isfinite(image.mean)) or not all(np.isfinite(image.std)) or any(v == 0 for v in image.std):
            raise EdgekitError(
                f"--mean {list(image.mean)} / --std {list(image.std)} must be finite, --std non-zero",
                "give pixel-unit values, e.g. --mean 127 --std 128",
            )
        for name, (shape, dtype) in (self.input_shapes or {}).items():
            check_input_shape(name, shape, dtype)
        if self.weights is not None and (":" not in self.model or Path(self.model).suffix.lower() in MODEL_SUFFIXES):
            raise EdgekitError(
                f"--weights is only used with module:callable models; '{self.model}' carries its own weights",
                "drop --weights, or pass the architecture as module:callable",
            )
        for path, what in ((self.weights, "--weights"), (self.train, "--train")):
            if path is not None:
                regular_file(path, what)
        for path, what in ((self.calib, "--calib"), (self.eval, "--eval")):  # .npz/.npy or a folder of images
            if path is not None:
                file_or_folder(path, what)
        t = self.baseline_tolerances
        if not (0 <= t.accuracy_points <= 100 and 0 <= t.cosine <= 2 and t.latency_ratio >= 1 and t.size_ratio >= 1):
            raise EdgekitError(f"baseline tolerances {t} are impossible", "give points ≥ 0 and ratios ≥ 1")
        if self.baseline is not None:
            load_baseline(self.baseline)


Log = Callable[[str], None]
# Relative cost of each step for the overall progress bar and its ETA.
WEIGHT_STAGE, WEIGHT_CALIBRATION, WEIGHT_FALLBACK, WEIGHT_BUILD, WEIGHT_CHECK = 1, 2, 3, 4, 2


def convert(opts: ConvertOptions, log: Log | Progress | None = None) -> dict:
    """Run the whole pipeline and return the report (also written to ``opts.out``).

    ``log`` takes progress messages, or is a :class:`~edgekit.progress.Progress` that also draws bars.
    Every check of the user's input happens before any work; ``opts.out`` is replaced only if edgekit
    wrote it (see :mod:`edgekit.safety`), and only once everything else is done.
    """
    progress = as_progress(log)
    opts.validate()
    target = load_target(opts.target)
    precisions = opts.precisions or target.default_precisions
    for p in precisions:
        if p not in PRECISIONS:
            raise EdgekitError(f"unknown precision '{p}'", f"use one or more of {', '.join(PRECISIONS)}")
    backends = opts.backends or target.backends
    for b in backends:
        backend_spec(b)  # an unknown name is a one-line error naming the known ones
    if opts.tune_trials and "tvm" not in backends:
        raise EdgekitError("--tune tunes TVM builds, and tvm is not among the backends", "add tvm to --backends")
    out = check_output_folder(opts.out, opts.input_paths())
    runner = get_runner(opts.device or target.runner, target, opts.boards)
    int8 = "int8" in precisions
    progress.plan(
        3 * WEIGHT_STAGE
        + WEIGHT_CALIBRATION * int8
        + WEIGHT_FALLBACK * (int8 and opts.budgets.max_accuracy_drop is not None)
        + (WEIGHT_BUILD + WEIGHT_CHECK) * len(precisions) * len(backends)
        + WEIGHT_STAGE * opts.layer_diff
    )
    try:
        runner.prepare(progress)
        opts = _with_tuning(opts, runner, target)
        return _convert_on(opts, target, precisions, backends, runner, out, progress)
    finally:
        runner.close()


def _with_tuning(opts: ConvertOptions, runner: Runner, target: Target) -> ConvertOptions:
    """Hand --tune to the TVM builds, with the boards that measure candidates when the device is a farm of
    real (not emulated) boards of the target's architecture."""
    if not opts.tune_trials:
        return opts
    from edgekit.emulator import cache_root

    tvm = {
        **opts.backend_options.get("tvm", {}),
        "tune_trials": opts.tune_trials,
        "tune_minutes": opts.tune_minutes,
        "tuning_records": str((opts.tuning_records or cache_root() / "tvm-tuning").resolve()),
    }
    if runner.name == "rpc" and not runner.any_emulated and all(f["machine"] == target.arch for f in runner.facts):
        # (a plain TVM RPC server's machine is unknown until a build runs there: it does not measure candidates)
        a = runner.address
        tvm.update(tune_tracker=f"{a.host}:{a.port}/{a.key}", tune_cores=min(f["cores"] for f in runner.facts))
    return replace(opts, backend_options={**opts.backend_options, "tvm": tvm})


def convert_targets(opts: ConvertOptions, targets: list[str], log: Log | Progress | None = None) -> dict:
    """Convert for several targets in one run: ``OUT/<target>/`` each as ``convert`` writes it, plus
    ``OUT/summary.json`` (every report, and all their build rows for ``--baseline``) and ``OUT/summary.md``.

    The whole folder is staged and published at once, like a single conversion's.
    """
    progress = as_progress(log)
    opts.validate()
    if len(set(targets)) != len(targets) or not targets:
        raise EdgekitError(f"targets {', '.join(targets)} name one twice (or none)", "name each target once")
    loaded = [load_target(t) for t in targets]  # every name is checked before any work
    folders = [t.name if t.name == ref else Path(ref).stem for t, ref in zip(loaded, targets, strict=True)]
    if len(set(folders)) != len(folders):
        raise EdgekitError(f"targets {', '.join(targets)} share a folder name", "rename one target file")
    out = check_output_folder(opts.out, opts.input_paths())
    reports = []
    with Staging(out) as staging:
        root = staging.root / "out"
        root.mkdir()
        for ref, folder in zip(targets, folders, strict=True):
            progress(f"target {ref}")
            reports.append(convert(replace(opts, target=ref, out=root / folder), progress))
        summary = {
            "edgekit_version": _version(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "targets": [{"target": r["target"]["name"], "folder": f} for r, f in zip(reports, folders, strict=True)],
            "builds": [row for r in reports for row in r["builds"]],
            "reports": reports,
        }
        summary = _final_paths(summary, {str(root): str(out)})
        from edgekit.report import write_summary

        write_summary(summary, root)
        staging.publish(root)
    return summary


def _convert_on(
    opts: ConvertOptions, target: Target, precisions, backends, runner: Runner, out: Path, log: Progress
) -> dict:
    """Load, check the data, then build and check everything in a staging folder published at the end."""
    with log.step(f"loading {opts.model}", WEIGHT_STAGE):
        source = load_model(opts.model, opts.weights, trust=opts.trust_model)
    if opts.prune is not None and source.framework != "pytorch":
        raise EdgekitError(
            f"--prune needs a PyTorch nn.Module; '{opts.model}' is a {source.framework} model",
            "prune TensorFlow models with the TensorFlow Model Optimization Toolkit before converting"
            if source.is_tf
            else "pass the architecture as module:callable (or file.py:callable) with --weights",
        )
    if opts.train is not None and opts.prune is None:
        raise EdgekitError("--train is only used by pruning recovery", "add --prune, or drop --train")
    calib, evalset, specs = _data(opts, source, log)
    train = None
    if opts.train is not None:
        train = load_dataset(opts.train, specs, opts.image)
        if train.labels is None:
            raise EdgekitError(f"--train '{opts.train}' has no 'labels' array", "add integer labels to the .npz")
    with Staging(out) as staging:
        scratch = staging.root
        data = (calib, evalset, train)
        report = _run(opts, target, precisions, backends, runner, source, data, specs, scratch, out, log)
        if log.library_log is not None:
            (scratch / "out" / "logs").mkdir(exist_ok=True)
            shutil.copyfile(log.library_log, scratch / "out" / "logs" / "libraries.log")
        staging.publish(scratch / "out")
    return report


def _resolve_specs(opts: ConvertOptions, source: SourceModel) -> list[TensorSpec] | None:
    names = source.input_names or []
    if opts.input_shapes:
        unknown = [n for n in opts.input_shapes if n and names and n not in names]
        if unknown:
            raise EdgekitError(
                f"--input-shape names {unknown} are not model inputs {names}", "use the model's input names"
            )
        if "" in opts.input_shapes:  # a bare shape applies to the only input
            if len(names) > 1:
                raise EdgekitError(
                    "a bare --input-shape needs a single-input model", "write NAME:SHAPE for every input"
                )
            shape, dtype = opts.input_shapes[""]
            return [TensorSpec(names[0] if names else "input", shape, dtype)]
        return [TensorSpec(n, *opts.input_shapes[n]) for n in (names or opts.input_shapes)]
    if source.input_specs and all(-1 not in s.shape for s in source.input_specs):
        return source.input_specs
    return None


def _data(opts: ConvertOptions, source: SourceModel, log: Log) -> tuple[Dataset, Dataset, list[TensorSpec]]:
    if opts.calib is None:
        raise EdgekitError("no calibration data given", "pass --calib with a .npz/.npy file or a folder of real images")
    specs = _resolve_specs(opts, source)
    data = load_dataset(opts.calib, specs, opts.image)
    if specs is None:
        specs = _specs_from_data(data, source)
        if len(specs) == 1 and specs[0].name not in data.inputs:
            data = Dataset({specs[0].name: next(iter(data.inputs.values()))}, data.labels, data.source)
    if opts.eval is not None:
        evalset = load_dataset(opts.eval, specs, opts.eval_image or opts.image)
        calib = data.take(0, min(opts.calib_size, len(data)))
        evalset = evalset.take(0, min(opts.eval_size, len(evalset)))
    else:
        if len(data) < 2:
            raise EdgekitError(
                f"calibration data '{opts.calib}' has {len(data)} sample(s)",
                "give at least 2 samples (calibration and held-out), or pass --eval",
            )
        n_calib = min(opts.calib_size, len(data) // 2)
        calib = data.take(0, n_calib)
        evalset = data.take(n_calib, n_calib + opts.eval_size)
    for what, ds in (("calibration", calib), ("held-out", evalset)):
        for name, arr in ds.inputs.items():
            if len(arr) > 1 and np.all(arr == arr[:1]):
                log(f"warning: every {what} sample of input '{name}' is identical — is this real data?")
            elif np.all(arr == 0):
                log(f"warning: the {what} input '{name}' is all zeros — is this real data?")
    return calib, evalset, specs


def _specs_from_data(data: Dataset, source: SourceModel) -> list[TensorSpec]:
    """Input specs taken from the data, named and ordered as the model's inputs, checked against its shapes."""
    specs = specs_from_dataset(data)
    names = source.input_names or []
    if len(specs) == 1 and len(names) == 1:
        specs = [TensorSpec(names[0], specs[0].shape, specs[0].dtype)]
    elif names:
        if sorted(s.name for s in specs) != sorted(names):
            raise EdgekitError(
                f"calibration arrays {sorted(data.inputs)} do not match the model inputs {names}",
                "name the arrays after the model inputs",
            )
        specs = sorted(specs, key=lambda spec: names.index(spec.name))  # the model's argument order
    for spec, model_spec in zip(specs, source.input_specs or [], strict=False):
        if len(spec.shape) != len(model_spec.shape) or any(
            a != b and b != -1 for a, b in zip(spec.shape, model_spec.shape, strict=True)
        ):
            raise EdgekitError(
                f"input '{spec.name}': the data has shape {spec.shape}, the model {model_spec.shape}",
                "give data with the model's input shape",
            )
    return specs


def _time(run: Callable, feeds: list[dict], runs: int, advance: Advance = lambda n: None) -> list[float]:
    """Milliseconds of ``runs`` inferences, cycling through ``feeds``."""
    times = []
    for i in range(runs):
        t0 = time.perf_counter_ns()
        run(feeds[i % len(feeds)])
        times.append((time.perf_counter_ns() - t0) / 1e6)
        advance(1)
    return times


def _measure_original(
    source: SourceModel, evalset: Dataset, opts: ConvertOptions, advance: Advance
) -> tuple[list[np.ndarray], dict, Callable[[int], list[float]]]:
    if source.is_torch:
        import torch

        torch.set_num_threads(opts.threads)
    run = source.as_function()
    feeds = [evalset.sample(i) for i in range(len(evalset))]
    try:
        t0 = time.perf_counter()
        outs = []
        for f in feeds:
            outs.append(run(f))
            advance(1)
        first_ms = (time.perf_counter() - t0) * 1e3 / len(feeds)
        for i in range(opts.warmup):
            run(feeds[i % len(feeds)])
            advance(1)
        times = _time(run, feeds, opts.runs, advance)
    except (Exception, SystemExit) as exc:
        raise EdgekitError(
            f"the original model fails on the given inputs ({one_line(exc, 200)})",
            "check --input-shape and the data's shape and dtype",
        ) from exc
    if not outs[0]:
        raise EdgekitError("the original model returns no tensor", "make the model return its output tensor(s)")
    reference = [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]
    bad = [j for j, r in enumerate(reference) if np.issubdtype(r.dtype, np.inexact) and not np.isfinite(r).all()]
    if bad:
        raise EdgekitError(
            f"the original model outputs NaN/inf on the held-out inputs (output {bad[0]})",
            "check the model and the input preprocessing (--mean/--std, dtype); edgekit compares finite outputs",
        )
    info = {
        "framework": source.framework,
        "location": source.location,
        "size_bytes": source.size_bytes,
        "latency_ms": latency_stats(times),
        "latencies_ms": [round(t, 4) for t in times],
        "mean_inference_ms_first_pass": first_ms,
        "device": "host",
        "threads": opts.threads,
    }
    return reference, info, lambda runs: _time(run, feeds, runs)


@dataclass
class Original:
    """Stage 1: the original model run on the held-out data (its outputs are what every build must match)."""

    outputs: list[np.ndarray]
    info: dict  # report["original"]: framework, size, latency, task metric, MACs/parameters
    time: Callable[[int], list[float]]  # times N more inferences on this host (paired with each host build)


@dataclass
class CheckedOnnx:
    """Stage 2: the (pruned) model exported to ONNX and checked against it on the held-out data."""

    model: SourceModel  # what was exported: the source, or the pruned module
    path: Path
    check: dict
    outputs: list[TensorSpec]
    complexity: dict  # MACs / parameters of the model that is built
    pruning: dict | None
    task: tuple[int, bool]  # the output that carries classes, and whether the user named it (--task-output)


@dataclass
class Int8Graph:
    """Stage 3: edgekit's shared int8 graph (what int8_graph backends build from) and the accuracy fallback."""

    mode: str  # static | dynamic
    path: Path | None = None
    error: str | None = None
    fallback: dict | None = None

    @property
    def float_nodes(self) -> tuple[str, ...]:
        """Layers the accuracy fallback keeps in float in every int8 build."""
        return tuple(self.fallback["kept_float"]) if self.fallback else ()


def _run(
    opts,
    target: Target,
    precisions,
    backends,
    runner: Runner,
    source: SourceModel,
    data: tuple[Dataset, Dataset, Dataset | None],
    specs: list[TensorSpec],
    scratch: Path,
    out: Path,
    log: Progress,
) -> dict:
    calib, evalset = data[:2]
    staged = scratch / "out"
    (staged / "onnx").mkdir(parents=True)
    store = BuildCache(cache_dir() if opts.cache else None)
    original = _original(source, evalset, opts, log)
    onnx = _export(opts, source, specs, data, original, (store, scratch, staged), log)
    _check_labels(evalset, original.outputs, onnx.task)
    own = compare(original.outputs, original.outputs, evalset.labels, *onnx.task).get("task_metric")
    if own is not None:
        original.info["task_metric"] = {"name": own["name"], "value": own["original"]}
    calib_digest = data_digest(calib)
    int8 = _quantize(opts, onnx, specs, calib, precisions, backends, (store, calib_digest, scratch), log)
    calib_npz, eval_npz = scratch / "calib.npz", scratch / "eval_inputs.npz"
    np.savez(calib_npz, **calib.inputs)
    np.savez(eval_npz, **evalset.inputs)
    needs_torch = any(backend_spec(b).source == "pytorch" for b in backends)
    run = _BuildRun(
        opts,
        target,
        runner,
        original,
        onnx,
        int8,
        calib,
        evalset,
        specs,
        calib_npz,
        eval_npz,
        scratch,
        staged,
        _save_torch(onnx.model, scratch) if needs_torch else None,
        _save_tf(source, scratch) if source.is_tf and any(backend_spec(b).tf_native for b in backends) else None,
        store,
        {"calib": calib_digest, "tf_source": file_digest(Path(opts.model)) if source.is_tf else None},
        {"eval": data_digest(evalset), "reference": arrays_digest([*original.outputs, *_labels(evalset)])},
        log,
    )
    builds = _build_all(run, [(backend, precision) for precision in precisions for backend in backends])
    flag_degraded(builds)
    layer_diffs = None
    if opts.layer_diff:
        with log.step("per-layer error of the lossy builds (edgekit diff)", WEIGHT_STAGE):
            layer_diffs = _layer_diffs(onnx.path, staged, builds, evalset)
    report = {
        "schema_version": SCHEMA_VERSION,
        "edgekit_version": _version(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": {"name": target.name, "triple": target.triple, "cpu": target.cpu, "description": target.description},
        "runner": runner.describe(),
        "model": {
            "inputs": [s.to_json() for s in specs],
            "outputs": [s.to_json() for s in onnx.outputs],
            "layout": _layout(source, specs),
            **onnx.complexity,
        },
        "data": {
            "calibration": {"source": calib.source, "samples": len(calib)},
            "evaluation": {"source": evalset.source, "samples": len(evalset), "labels": evalset.labels is not None},
        },
        "settings": {
            "warmup": opts.warmup,
            "runs": opts.runs,
            "threads": opts.threads,
            "jobs": opts.jobs,
            "precisions": list(precisions),
            "backends": list(backends),
            "quantization": {**asdict(opts.quant), "int8_mode": int8.mode},
            "recipe": opts.recipe,
            "cache": str(store.root) if store.enabled else "off",
        },
        "original": original.info,
        "onnx": {
            "path": "onnx/model.onnx",
            "check": onnx.check,
            "qdq": f"onnx/{int8.path.name}" if int8.path else None,
        },
        "pruning": onnx.pruning,
        "accuracy_fallback": int8.fallback,
        "builds": builds,
        "layer_diff": layer_diffs,
        "not_verified": _not_verified(target, runner, backends),
    }
    from edgekit.report import write_report

    if opts.baseline is not None:
        tol = opts.baseline_tolerances
        report["baseline"] = against_baseline(report, load_baseline(opts.baseline), str(opts.baseline), tol)
    budgeted = any(v is not None for v in asdict(opts.budgets).values()) or opts.baseline is not None
    report["recommendation"] = recommend(builds, budgeted)
    report = _final_paths(report, {str(staged): str(out), str(scratch): "(edgekit's work folder)"})
    write_report(report, staged)
    return report


def _original(source: SourceModel, evalset: Dataset, opts: ConvertOptions, log: Progress) -> Original:
    with log.step("measuring the original model", WEIGHT_STAGE, len(evalset) + opts.warmup + opts.runs) as advance:
        reference, info, timer = _measure_original(source, evalset, opts, advance)
    return Original(reference, info, timer)


def _task_output(wanted: str | None, outputs: list[TensorSpec]) -> tuple[int, bool]:
    """(index of the output that carries classes, whether the user named it) from ``--task-output``."""
    if wanted is None:
        return 0, False
    names = [o.name for o in outputs]
    if wanted.isdigit() and int(wanted) < len(names):
        return int(wanted), True
    if wanted in names:
        return names.index(wanted), True
    raise EdgekitError(
        f"--task-output '{wanted}' is not an output of the model (outputs: {', '.join(names)})",
        f"name one of them, or give its index 0..{len(names) - 1}",
    )


def _export(
    opts: ConvertOptions,
    source: SourceModel,
    specs: list[TensorSpec],
    data: tuple[Dataset, Dataset, Dataset | None],
    original: Original,
    where: tuple[BuildCache, Path, Path],
    log: Progress,
) -> CheckedOnnx:
    """Prune (if asked), export to ONNX (or reuse a cached export that still matches), check it."""
    store, scratch, staged = where
    calib, evalset = data[:2]
    path = staged / "onnx" / "model.onnx"
    export_key = None
    if store.enabled and opts.prune is None:
        parts = {"source": source_digest(source), "inputs": [s.to_json() for s in specs], "model": opts.model}
        export_key = make_key("export", parts)
    exported_before = export_key and store.get(export_key, scratch / f"cached_{export_key}")
    complexity = exported_before["complexity"] if exported_before else _complexity(source, specs, calib)
    original.info.update(complexity)

    pruning, exported, exported_reference = None, source, original.outputs
    if opts.prune is not None:
        exported, pruning = _prune(opts.prune, source, specs, data, original.outputs, log)
        exported_reference = _outputs(exported.as_function(), evalset)
        complexity = {"macs": pruning["macs_after"], "params": pruning["params_after"]}

    what = "pruned model" if pruning else "original"
    with log.step(f"exporting to ONNX and checking it against the {what}", WEIGHT_STAGE):
        check = None
        if exported_before:  # the cached export is used only if it still matches the model's outputs
            shutil.copyfile(scratch / f"cached_{export_key}" / path.name, path)
            task = _task_output(opts.task_output, onnx_hub.onnx_output_specs(path))
            with contextlib.suppress(EdgekitError):
                check = _check_onnx(path, evalset, exported_reference, task)
                log("ONNX export reused from the cache (checked against the original)")
        if check is None:
            onnx_hub.export_onnx(exported, specs, path)
            if not complexity:  # sources the framework counters cannot follow are counted on the exported graph
                complexity = _onnx_complexity(path, specs)
                original.info.update(complexity)
            task = _task_output(opts.task_output, onnx_hub.onnx_output_specs(path))
            check = _check_onnx(path, evalset, exported_reference, task)
            if export_key:
                store.put(export_key, path, {"kind": "export", "complexity": complexity})
        outputs = onnx_hub.onnx_output_specs(path)
    return CheckedOnnx(exported, path, check, outputs, complexity, pruning, task)


def _quantize(
    opts: ConvertOptions,
    onnx: CheckedOnnx,
    specs: list[TensorSpec],
    calib: Dataset,
    precisions,
    backends,
    shared: tuple[BuildCache, str, Path],
    log: Progress,
) -> Int8Graph:
    """The shared int8 graph (when a backend builds from it or a budget needs it) and the accuracy fallback."""
    budget = opts.budgets.max_accuracy_drop
    int8 = Int8Graph(onnx_hub.int8_mode(onnx.path, specs, opts.quant))
    if "int8" not in precisions:
        return int8
    if any(backend_spec(b).uses_int8_graph(int8.mode) for b in backends) or budget is not None:
        folder = onnx.path.parent
        int8.path, int8.error = _shared_int8_graph(onnx.path, folder, calib, opts.quant, int8.mode, shared, log)
    else:
        log.done(WEIGHT_CALIBRATION)
    if int8.path is not None and budget is not None and int8.mode != "dynamic":
        with log.step("accuracy fallback: finding the int8-sensitive layers", WEIGHT_FALLBACK):
            int8.fallback = _accuracy_fallback(onnx, int8.path, calib, budget, opts.quant, log, shared)
    elif budget is not None:
        if int8.path is not None:
            log("accuracy fallback skipped: it works on static (QDQ) graphs; the budget still gates the run")
        log.done(WEIGHT_FALLBACK)
    return int8


def _reused(row: dict) -> str:
    c = row.get("cache") or {}
    parts = [what for what, hit in (("build", c.get("reused")), ("measurement", c.get("measured_at"))) if hit]
    return f" ({' and '.join(parts)} reused from the cache)" if parts else ""


def _labels(data: Dataset) -> list[np.ndarray]:
    return [] if data.labels is None else [data.labels]


def _layer_diffs(onnx_fp32: Path, staged: Path, builds: list[dict], evalset: Dataset) -> dict:
    """``edgekit diff`` of every checked int8/fp16 build it supports, on the first held-out sample."""
    from edgekit import diff

    found = {}
    for row in builds:
        name = f"{row['backend']}_{row.get('requested_precision', row['precision'])}"
        if row["status"] != "ok" or backend_spec(row["backend"]).layer_diff or row["precision"] == "fp32":
            continue
        try:
            result = diff.layer_diff(onnx_fp32, staged / name, evalset.sample(0))
        except Exception as exc:  # the per-layer view is an aid: the build itself was checked
            found[name] = {"backend": row["backend"], "error": one_line(exc)}
            continue

        def finite(r: dict) -> dict:  # an exact layer has infinite SNR: null in JSON
            return {k: r[k] if k != "snr_db" or np.isfinite(r[k]) else None for k in ("node", "op", "cosine", "snr_db")}

        rows = [finite(r) for r in result["rows"]]
        jumps = {k: result[k] and finite(result[k]) for k in ("first_jump", "largest_jump")}
        found[name] = {"backend": row["backend"], "compared_through": result["compared_through"], "rows": rows, **jumps}
    return found


def _final_paths(value, mapping: dict[str, str]):
    """``value`` with staging-folder paths in its strings replaced by the paths the user will see."""
    if isinstance(value, str):
        for old, new in mapping.items():
            value = value.replace(old, new)
        return value
    if isinstance(value, dict):
        return {k: _final_paths(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_final_paths(v, mapping) for v in value]
    return value


def _check_labels(evalset: Dataset, reference: list[np.ndarray], task: tuple[int, bool]) -> None:
    """Labels must be class indices of the model's class output."""
    labels, index = evalset.labels, task[0]
    if labels is None or not len(labels):
        return
    if reference[index].ndim != 2 or reference[index].shape[1] < 2:
        raise EdgekitError(
            f"labels were given, but output {index} has shape {reference[index].shape}, not (samples, classes)",
            "name the class output with --task-output NAME, or drop the labels array",
        )
    classes = reference[index].shape[1]
    if labels.min() < 0 or labels.max() >= classes:
        raise EdgekitError(
            f"labels range {int(labels.min())}..{int(labels.max())}, output {index} has {classes} classes",
            f"store class indices 0..{classes - 1}, or name the class output with --task-output NAME",
        )


def _save_tf(source: SourceModel, scratch: Path) -> Path:
    """A TensorFlow source as TFLite's converter takes it: a SavedModel folder (Keras is exported), or the .tflite."""
    if source.framework != "keras":
        return Path(source.location).resolve()
    path = scratch / "saved_model"
    with contextlib.redirect_stdout(io.StringIO()):
        source.module.export(str(path))
    return path


def _layout(source: SourceModel, specs: list[TensorSpec]) -> str:
    """Image layout of the inputs as the source defines them (kept through ONNX; TFLite builds are NHWC)."""
    images = [s for s in specs if len(s.shape) == 4]
    if not images:
        return "no image inputs"
    channels_last = all(s.shape[3] in (1, 3, 4) and s.shape[1] not in (1, 3, 4) for s in images)
    return "channels-last (NHWC)" if channels_last else "channels-first (NCHW)"


def _onnx_complexity(path: Path, specs: list[TensorSpec]) -> dict:
    from edgekit.complexity import onnx_macs_params

    try:
        macs, params = onnx_macs_params(path, {s.name: s.shape for s in specs})
    except Exception:  # control flow or shapes the counter cannot follow: no MACs column
        return {}
    return {"macs": macs, "params": params}


def _save_torch(source: SourceModel, scratch: Path) -> Path | None:
    """The PyTorch model as a file a converter process can load (pickled module, or the TorchScript file)."""
    if source.framework == "torchscript":
        return Path(source.location).resolve()
    if source.framework != "pytorch":
        return None
    import torch

    path = scratch / "torch_model.pt"
    torch.save(source.module, path)
    return path


def _outputs(run: Callable, evalset: Dataset) -> list[np.ndarray]:
    outs = [run(evalset.sample(i)) for i in range(len(evalset))]
    return [np.concatenate([o[j] for o in outs]) for j in range(len(outs[0]))]


def _complexity(source: SourceModel, specs: list[TensorSpec], calib: Dataset) -> dict:
    """MACs and parameters of the source, counted on every conv/matmul (see :mod:`edgekit.complexity`).

    TensorFlow sources are counted on their exported ONNX graph instead ({} here).
    """
    if source.framework == "onnx":
        return _onnx_complexity(source.onnx_path, specs)
    if not source.is_torch:
        return {}
    import torch

    from edgekit.complexity import torch_macs_params

    module = source.module.module() if source.framework == "torch.export" else source.module
    example = tuple(torch.from_numpy(calib.inputs[s.name][:1]) for s in specs)
    try:
        macs, params = torch_macs_params(module, example)
    except Exception:  # a model the counter cannot run has no MACs column
        return {}
    return {"macs": macs, "params": params}


def _prune(
    config: PruneConfig,
    source: SourceModel,
    specs: list[TensorSpec],
    data: tuple[Dataset, Dataset, Dataset | None],
    reference: list[np.ndarray],
    log: Log,
) -> tuple[SourceModel, dict]:
    """Prune and recover the source; the pruned model's held-out outputs are compared with the original's."""
    from edgekit.prune import prune_model

    calib, evalset, train = data
    log(f"pruning ({config.kind} {config.ratio}, {config.importance} importance)")
    try:
        result = prune_model(source.module, [s.name for s in specs], calib, config, train, log)
    except EdgekitError:
        raise
    except Exception as exc:  # torch-pruning's tracer and pruning functions fail in many shapes
        raise EdgekitError(
            f"torch-pruning cannot prune this model ({one_line(exc, 200)})",
            "exclude the failing layers with --prune-ignore, or use --prune unstructured:RATIO",
        ) from exc
    pruned = replace(source, module=result.module)
    check = compare(reference, _outputs(pruned.as_function(), evalset), evalset.labels)
    info = {"config": asdict(config), **result.to_json(), "pruned_vs_original": check}
    return pruned, info


def _shared_int8_graph(
    fp32: Path, folder: Path, calib: Dataset, quant: onnx_hub.QuantConfig, mode: str, shared: tuple, log: Progress
) -> tuple[Path | None, str | None]:
    """The shared int8 graph that ONNX Runtime and TVM build from, TFLite takes its biases from, OpenVINO its
    ranges and first-layer bits, and the fallback searches (static: NNCF's QDQ graph; dynamic: ORT's):
    (path, error)."""
    store, calib_digest, scratch = shared
    name = "model_int8_dynamic.onnx" if mode == "dynamic" else "model_int8_qdq.onnx"
    parts = {"onnx": file_digest(fp32), "calib": calib_digest, "quant": asdict(quant), "mode": mode}
    key = make_key("int8-graph", parts)
    what = f"int8 (QDQ, {quant.quantizer.upper()}, {quant.describe()})"
    if mode == "dynamic":
        what = "dynamic int8 (MatMul model with token inputs)"
    with log.step(f"quantizing to {what} with the calibration set", WEIGHT_CALIBRATION, len(calib)) as advance:
        if store.get(key, scratch / f"cached_{key}") is not None:
            log("int8 graph reused from the cache")
            return Path(shutil.copyfile(scratch / f"cached_{key}" / name, folder / name)), None
        try:
            if mode == "dynamic":
                graph = onnx_hub.quantize_dynamic_int8(fp32, folder / name, quant, scratch)
            else:
                graph = quantize_static(fp32, folder / name, calib, scratch, quant, advance)
        except Exception as exc:
            return None, f"{mode} int8 quantization failed: {one_line(exc)}"
        store.put(key, graph, {"kind": "int8-graph"})
        return graph, None


def _accuracy_fallback(
    exported: CheckedOnnx,
    qdq: Path,
    calib: Dataset,
    budget: float,
    quant: onnx_hub.QuantConfig,
    log: Log,
    cached: tuple[BuildCache, str, Path],
) -> dict:
    """Keep the most int8-sensitive layers in float (chosen on calibration data) and rewrite the QDQ graph."""
    import onnx

    from edgekit.fallback import FallbackResult, find_fallback, float_nodes

    store, calib_digest, scratch = cached
    fp32 = exported.path
    parts = {"onnx": file_digest(fp32), "qdq": file_digest(qdq), "calib": calib_digest, "budget": budget}
    parts["task_output"] = list(exported.task)
    key = make_key("fallback", parts)
    entry = store.get(key, scratch / f"cached_{key}")
    if entry is not None:
        log("accuracy fallback reused from the cache")
        result = FallbackResult(**entry["result"])
    else:
        result = find_fallback(fp32, qdq, calib, budget, log, task=exported.task, quant=quant)
        store.put(key, None, {"kind": "fallback", "result": asdict(result)})
    if result.kept_float:
        onnx.save(float_nodes(onnx.load(str(qdq)), set(result.kept_float)), str(qdq))
        log(f"accuracy fallback: {len(result.kept_float)} layer(s) kept in float")
    return {
        "max_drop_points": budget,
        "chosen_on": f"{len(calib)} calibration samples, agreement with the fp32 graph",
        "chosen_by": result.search,
        "kept_float": result.kept_float,
        "agreement_before": result.agreement_before,
        "agreement_after": result.agreement_after,
        "cosine_before": result.cosine_before,
        "cosine_after": result.cosine_after,
        "met_on_calibration": result.met,
        "most_sensitive": [{"node": n, "gain": g} for n, g in result.sensitivity[:10]],
    }


def _check_onnx(path: Path, evalset: Dataset, reference: list[np.ndarray], task: tuple[int, bool]) -> dict:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    produced = _outputs(lambda feed: sess.run(None, feed), evalset)
    try:
        check = compare(reference, produced, evalset.labels, *task)
    except ValueError as exc:
        raise EdgekitError(
            f"the exported ONNX graph disagrees with the original: {exc}",
            "report the model to edgekit with the export log",
        ) from exc
    if not (check["cosine_min"] >= ONNX_COSINE_FLOOR and finite_metrics(check)):
        raise EdgekitError(
            f"the exported ONNX graph differs from the original (cosine {check['cosine_min']:.5f}, "
            f"max abs {check['max_abs']:.3g})",
            "make the model deterministic in eval mode (dropout off, no random ops) before export",
        )
    return check


@dataclass
class _BuildRun:
    """What every build of one convert run shares: the stages' results, the data and where things go."""

    opts: ConvertOptions
    target: Target
    runner: Runner
    original: Original
    onnx: CheckedOnnx
    int8: Int8Graph
    calib: Dataset
    evalset: Dataset
    specs: list[TensorSpec]
    calib_npz: Path
    eval_npz: Path
    scratch: Path
    staged: Path
    torch_model: Path | None  # the built model pickled, for converters that start from PyTorch (Core ML, hls4ml)
    tf_model: Path | None  # a TensorFlow source as a SavedModel folder or .tflite, for TFLite's own converter
    cache: BuildCache
    digests: dict  # content hashes of the calibration data and of a TensorFlow source (build cache keys)
    check_digests: dict  # of the held-out data and the original's outputs on it (measurement cache keys)
    progress: Progress
    lock: threading.Lock = field(default_factory=threading.Lock)  # builds report progress from several threads


@contextlib.contextmanager
def _step(run: _BuildRun, description: str, weight: float) -> Iterator[None]:
    """A progress step entered and left under the run's lock (builds report from several threads)."""
    with run.lock:
        step = run.progress.step(description, weight)
        step.__enter__()
    try:
        yield
    finally:
        with run.lock:
            step.__exit__(None, None, None)


def _build_all(run: _BuildRun, pairs: list[tuple[str, str]]) -> list[dict]:
    """Build every backend × precision, up to ``--jobs`` at once (each converter is its own process), then
    check the builds on the device one after another, so that no conversion runs while a build is timed."""
    with ThreadPoolExecutor(max_workers=min(run.opts.jobs, len(pairs))) as pool:
        built = list(pool.map(lambda pair: _build(run, *pair, fp32_too=(pair[0], "fp32") in pairs), pairs))
    rows = []
    for (backend, precision), (row, build) in zip(pairs, built, strict=True):
        if build is None:
            run.progress.done(WEIGHT_CHECK)
        else:
            with run.progress.step(f"checking {backend} {precision} on {run.runner.label()}", WEIGHT_CHECK):
                row = _check_build(run, backend, build, row)
        rows.append(row)
        reason = f" ({row['reason']})" if row.get("reason") else ""
        run.progress(f"{backend} {precision}: {row['status']}{_reused(row)}{reason}")
    return rows


def _build(run: _BuildRun, backend: str, precision: str, fp32_too: bool) -> tuple[dict, dict | None]:
    """Build one backend × precision in a worker process (or take it from the cache): (row, build or None).

    int8 in a mode the backend cannot compute in integers is not offered: the row is its fp32 build, or is
    skipped when an fp32 row is built anyway (``fp32_too``)."""
    name, opts, spec = f"{backend}_{precision}", run.opts, backend_spec(backend)
    row: dict = {
        "backend": backend,
        "precision": precision,
        "target": run.target.name,
        "device": run.runner.label(),
        "status": "failed",
        "artifacts": [],
        "size_bytes": None,
        "latency_ms": None,
        "accuracy": None,
    }
    out_dir = run.staged / name

    def unbuilt(status: str, reason: str) -> tuple[dict, None]:
        shutil.rmtree(out_dir, ignore_errors=True)
        row.pop("prepend_notes", None)
        row.update(status=status, reason=reason)
        return row, None

    if precision == "int8" and spec.int8_graph and run.int8.path is None:
        run.progress.done(WEIGHT_BUILD)
        return unbuilt("failed", run.int8.error or "no int8 QDQ graph")
    if precision == "int8" and run.int8.mode not in spec.int8_modes:
        not_offered = f"{backend} int8 is not offered for {run.int8.mode} int8: {spec.int8_not_offered}"
        if fp32_too:
            run.progress.done(WEIGHT_BUILD)
            return unbuilt("skipped", f"{not_offered}; the {backend} fp32 row is its build")
        row["prepend_notes"] = [f"{not_offered}; built in fp32 instead"]
        precision = "fp32"
    ctx = BuildContext(
        onnx_fp32=run.onnx.path,
        onnx_qdq=run.int8.path if spec.uses_int8_graph(run.int8.mode) and precision == "int8" else None,
        precision=precision,
        target=run.target,
        calib=run.calib,
        inputs=run.specs,
        outputs=run.onnx.outputs,
        out_dir=out_dir,
        work_dir=run.scratch / f"work_{name}",
        float_nodes=run.int8.float_nodes if precision == "int8" else (),
        torch_model=run.torch_model if spec.source == "pytorch" else None,
        tf_model=run.tf_model if spec.tf_native else None,
        options=opts.backend_options.get(backend, {}),
        quant=opts.quant,
        int8_mode=run.int8.mode,
    )
    key = _build_key(run, backend, ctx)
    t0 = time.perf_counter()
    with _step(run, f"building {backend} {precision}", WEIGHT_BUILD):
        entry = run.cache.get(key, out_dir)
        if entry is not None:
            result = entry["result"]
            row["cache"] = {"reused": True, "first_build_s": entry["build_s"]}
        else:
            result = _build_in_worker(run, backend, ctx)
    row["build_s"] = round(time.perf_counter() - t0, 2)
    if result["status"] != "ok":
        return unbuilt(result["status"], result["reason"])
    if entry is None:
        run.cache.put(key, out_dir, {"kind": "build", "result": result, "build_s": row["build_s"]})
    return row, result["build"]


def _build_key(run: _BuildRun, backend: str, ctx: BuildContext) -> str:
    """Everything a build depends on (see :mod:`edgekit.cache`)."""
    graphs = {"fp32": file_digest(ctx.onnx_fp32)}
    if ctx.precision == "int8" and ctx.onnx_qdq is not None:
        graphs["int8"] = file_digest(ctx.onnx_qdq)
    parts = {
        "graphs": graphs,
        "precision": ctx.precision,
        "target": asdict(ctx.target),
        "inputs": [s.to_json() for s in ctx.inputs],
        "outputs": [s.to_json() for s in ctx.outputs],
        "float_nodes": list(ctx.float_nodes),
        "options": ctx.options,
        "quant": asdict(ctx.quant),
        "int8_mode": ctx.int8_mode,
        "torch_model": ctx.torch_model is not None,
        "backend_inputs": get_converter(backend).cache_inputs(ctx),
        **run.digests,
    }
    return make_key(f"build:{ctx.out_dir.name}", parts)


def _build_in_worker(run: _BuildRun, backend: str, ctx: BuildContext) -> dict:
    """Run one converter in its own process; its output goes to ``logs/BUILD.log`` in the output folder."""
    name = ctx.out_dir.name
    job = run.scratch / f"job_{name}.json"
    job.write_text(json.dumps(job_to_json(backend, ctx, run.calib_npz)))
    timeout = run.opts.timeout_s or BUILD_LIMIT_S + get_converter(backend).extra_build_s(ctx)
    try:
        proc = run_process([sys.executable, "-m", "edgekit.build_worker", str(job)], timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"conversion stopped after its time limit ({timeout:.0f} s; --timeout)"}
    logs = run.staged / "logs"
    logs.mkdir(exist_ok=True)
    (logs / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if run.progress.verbose:
        with run.lock:
            run.progress(f"{name} converter output:\n{proc.stdout}{proc.stderr}".rstrip())
    result_path = job.with_suffix(".result.json")
    if not result_path.exists():
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-1:] or [f"exit code {proc.returncode}"]
        return {"status": "failed", "reason": f"converter crashed: {tail[0][:200]}"}
    return json.loads(result_path.read_text())


def _check_build(run: _BuildRun, backend: str, build: dict, row: dict) -> dict:
    """Measure a finished build: size, then outputs and latency on the device (or, for an unchanged build
    on the same device, data and settings, the cached measurement unless ``--recheck``), then the budgets."""
    opts, runner, precision = run.opts, run.runner, row["precision"]
    name = f"{backend}_{precision}"
    out_dir = run.staged / name
    row.update(
        precision=build["precision"],
        requested_precision=precision,
        quantization=build["quantization"],
        notes=[*row.pop("prepend_notes", []), *build["notes"]],
    )
    row["artifacts"] = [str(p.relative_to(run.staged)) + ("/" if p.is_dir() else "") for p in sorted(out_dir.iterdir())]
    deployable = [out_dir / f for key, f in build["artifacts"].items() if key in ("model", "weights", run.target.arch)]
    files = [f for p in deployable for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    row["size_bytes"] = sum(f.stat().st_size for f in files)
    row["size_compressed_bytes"] = sum(_deflated_size(f) for f in files)
    row.update(run.onnx.complexity)
    not_runnable = runner.cannot_run(backend)
    if not_runnable:
        row.update(status="skipped", device="not run", reason=f"built, not run: {not_runnable}")
        return row
    warmup, runs = runner.repetitions(opts.warmup, opts.runs)
    device = {"device": [runner.label(), runner.describe()], "repetitions": [warmup, runs, opts.threads]}
    check_key = make_key("check", {"artifacts": file_digest(out_dir), **run.check_digests, **device})
    entry = None if opts.recheck else run.cache.get(check_key, run.scratch / f"cached_{check_key}")
    if entry is not None:
        row.update(entry["measured"])
        row.setdefault("cache", {})["measured_at"] = entry["measured_at"]
    else:
        limit, why = _check_limit(run, warmup, runs)
        if not _measure(run, backend, build, row, RunSpec(warmup, runs, opts.threads, limit), why):
            return row
        measured = {k: row[k] for k in MEASURED if k in row}
        when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        run.cache.put(check_key, None, {"kind": "measurement", "measured": measured, "measured_at": when})
    row["status"] = "ok"
    row["budget"] = _check_budgets(row, opts.budgets)
    return row


# What a device check adds to a row (kept in the cache with the build it measured).
MEASURED = (
    "accuracy", "latency_ms", "latencies_ms", "latency_kind", "load_s", "first_inference_ms", "peak_rss_mb",
    "runtime", "threads", "runs", "warmup", "device_facts", "runtime_precisions", "benchmark_model",
    "speedup_vs_original", "original_latency_ms", "executed", "notes", "boards",
)  # fmt: skip


def check_time_limit(original_p50_ms: float, inferences: int, emulated: bool) -> float:
    """Seconds a device check may take: ``CHECK_SLOWDOWN`` × the original's time for the same inferences
    (× ``EMULATION_SLOWDOWN`` on an emulated device), at least ``MIN_CHECK_S``."""
    expected_s = original_p50_ms / 1e3 * inferences * (EMULATION_SLOWDOWN if emulated else 1.0)
    return max(MIN_CHECK_S, CHECK_SLOWDOWN * expected_s)


def _check_limit(run: _BuildRun, warmup: int, runs: int) -> tuple[float, str]:
    """The device check's time limit and how it was chosen (said in the row when a build runs past it)."""
    if run.opts.timeout_s is not None:
        return run.opts.timeout_s, "--timeout"
    inferences = len(run.evalset) + warmup + runs
    p50 = run.original.info["latency_ms"]["p50"]
    limit = check_time_limit(p50, inferences, run.runner.any_emulated)
    emulated = f" × {EMULATION_SLOWDOWN:.0f} (emulation)" if run.runner.any_emulated else ""
    how = f"{CHECK_SLOWDOWN:.0f} × the original's {p50:.2f} ms × {inferences} inferences{emulated}"
    how += f", at least {MIN_CHECK_S:.0f} s"
    return limit, how


def _measure(run: _BuildRun, backend: str, build: dict, row: dict, spec: RunSpec, why: str) -> bool:
    """Run the build on the device and compare it with the original; False (with the reason) if that fails."""
    runner, name = run.runner, f"{backend}_{row['requested_precision']}"
    out_dir = run.staged / name
    try:
        measured = runner.run(out_dir, run.eval_npz, run.scratch / f"run_{name}", spec)
        row["accuracy"] = compare(run.original.outputs, measured.outputs, run.evalset.labels, *run.onnx.task)
    except RunnerTimeout as exc:
        row["reason"] = (
            f"stopped: the device check ran past its time limit of {spec.timeout:.0f} s ({why}); every other "
            f"row is complete — allow more with --timeout SECONDS ({one_line(exc)})"
        )
        return False
    except (RunnerError, ValueError) as exc:
        row["reason"] = f"built, but the check failed: {one_line(exc)}"
        return False
    if not finite_metrics(row["accuracy"]):
        bad = row["accuracy"].get("non_finite_outputs", 0)
        row["reason"] = f"the build's outputs contain {bad} NaN/inf value(s); its accuracy cannot be trusted"
        return False
    info = measured.info
    row.update(
        latency_ms=latency_stats(info["latencies_ms"]),
        latencies_ms=[round(t, 4) for t in info["latencies_ms"]],
        latency_kind=_latency_kind(backend, runner),
        load_s=info["load_s"],
        first_inference_ms=info["first_inference_ms"],
        peak_rss_mb=info["peak_rss_mb"],
        runtime=info["runtime"],
        threads=info["threads"],
        runs=info["runs"],
        warmup=info["warmup"],
        device_facts=info["device"],
    )
    for key in ("runtime_precisions", "benchmark_model"):  # OpenVINO's executed precisions; phone tool timings
        if key in info:
            row[key] = info[key]
    if "farm" in info:  # a board farm: every board's result, the median and spread across them
        row["boards"] = info["farm"]
    if runner.name == "host" and row["latency_kind"] == "measured":
        # The original timed again right after the build, on the same host under the same load: a shared
        # host's speed drifts between the start of a run and a build's check (seen: 204 ms, then 48 ms).
        run.original.time(run.opts.warmup)  # warm again after the build's process had the cores
        paired = latency_stats(run.original.time(len(info["latencies_ms"])))
        row["original_latency_ms"] = paired
        row["speedup_vs_original"] = paired["p50"] / row["latency_ms"]["p50"]
    if row["precision"] == "int8":
        row["executed"] = _executed(backend, out_dir, row, run.scratch / f"inspect_{name}")
        e = row["executed"]
        total = e.get("int8_compute_layers", 0) + e.get("float_compute_layers", 0)
        if e.get("mostly_float"):
            row["notes"].append(
                f"silent float fallback: only {e['int8_compute_layers']} of {total} compute layers run in int8 "
                f"({e['source']})"
            )
        elif e.get("precision") == "mixed":
            row["notes"].append(
                f"mixed precision: {e['float_compute_layers']} of {total} compute layers run in float ({e['source']})"
            )
    return True


def _latency_kind(backend: str, runner: Runner) -> str:
    kind = backend_spec(backend).latency_kind
    return "emulated" if kind == "measured" and runner.emulated else kind


def _executed(backend: str, out_dir: Path, measured: dict, work: Path) -> dict:
    """What the runtime really executes in int8 (the backend counts it); never fails the build."""
    try:
        manifest = json.loads((out_dir / "build.json").read_text())
        work.mkdir(parents=True, exist_ok=True)
        return get_converter(backend).executed(out_dir, manifest, measured, work)
    except Exception as exc:  # a runtime that cannot be inspected still ran and was checked
        return {"error": one_line(exc)}


def _deflated_size(path: Path) -> int:
    """Bytes after zlib deflate: what a sparse (unstructured-pruned) artifact costs in an app bundle or a download."""
    import zlib

    return len(zlib.compress(path.read_bytes(), 6))


def _check_budgets(row: dict, budgets: Budgets) -> dict:
    """Budget violations of a checked row; a NaN metric never passes (every comparison is written to fail on NaN)."""
    acc, violations = row["accuracy"], []
    agreed, named = agreement(acc)
    gated = 1.0 if agreed is None else agreed  # no class output: nothing to agree on (an agreement of 0 fails)
    if budgets.min_top1_agreement is not None and not gated >= budgets.min_top1_agreement:
        violations.append(f"{named} {agreed:.3f} < {budgets.min_top1_agreement}")
    if budgets.min_cosine is not None and not acc["cosine"] >= budgets.min_cosine:
        violations.append(f"cosine {acc['cosine']:.4f} < {budgets.min_cosine}")
    task = acc.get("task_metric")
    if budgets.max_accuracy_drop is not None:
        # Points of task accuracy when labels are given, else points of top-1 agreement (or of cosine).
        if task is not None:
            drop, what = (task["original"] - task["build"]) * 100, "accuracy"
        elif agreed is not None:
            drop, what = (1.0 - agreed) * 100, named
        else:  # no class output: points of output cosine (× 100), never called an agreement
            drop, what = (1.0 - acc["cosine"]) * 100, "output cosine"
        if not drop <= budgets.max_accuracy_drop:
            violations.append(f"{what} drop {drop:.2f} pt > {budgets.max_accuracy_drop} pt")
    if budgets.max_size_mb is not None and not (row.get("size_bytes") or 0) / 1e6 <= budgets.max_size_mb:
        violations.append(f"size {(row.get('size_bytes') or 0) / 1e6:.3f} MB > {budgets.max_size_mb} MB")
    if budgets.max_latency_ms is not None and not row["latency_ms"]["p50"] <= budgets.max_latency_ms:
        if row.get("latency_kind") == "emulated":
            violations.append("latency budget not checkable: emulated latency is not device latency")
        else:
            violations.append(f"p50 {row['latency_ms']['p50']:.3f} ms > {budgets.max_latency_ms} ms")
    return {"passed": not violations, "violations": violations}


def _not_verified(target: Target, runner: Runner, backends) -> list[str]:
    import platform

    notes = []
    if target.platform in ("android", "ios") and runner.name != "adb":
        notes.append(
            f"not run on a phone: the {target.platform} builds that ran did so on {runner.describe()} — the same "
            "AArch64 CPU kernels, but not the phone's OS, scheduler, NNAPI/GPU delegates or Apple Neural Engine"
        )
    for backend in map(backend_spec, backends):
        if backend.not_verified and (not backend.host_system or platform.system() != backend.host_system):
            notes.append(backend.not_verified)
    if runner.emulated:
        notes.append(
            f"outputs and accuracy come from the {target.arch} builds running in an emulated device "
            f"({runner.describe()}); its latencies are emulation latencies (10–400× slower than a real "
            f"core, run count reduced to ≤ {runner.MAX_RUNS}): compare builds with them, never quote them "
            "as device latency; no speed-up against the host-measured original is given; peak RSS includes qemu itself"
        )
    if runner.name == "host" and target.arch != "x86_64" and onnx_hub.x86_without_vnni():
        notes.append(
            "this x86 host has no VNNI: ONNX Runtime's and OpenVINO's int8 kernels here multiply u8×s8 with "
            f"saturating 16-bit sums, so their int8 accuracy on this host is lower than on {target.arch} "
            "(check with --device emulated)"
        )
    if runner.name == "host" and target.arch != platform.machine() and target.platform != "fpga":
        notes.append(
            f"builds for {target.name} ({target.arch}) were checked on this {platform.machine()} host, "
            f"not on {target.arch}: TFLite/ONNX/OpenVINO files are the same artifacts with host kernels, "
            f"and TVM's {target.arch} library was cross-compiled but not executed (its host twin was); "
            f"latencies are host latencies, not {target.name} latencies"
        )
    return notes


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekit")
    except PackageNotFoundError:
        return "0+unknown"
