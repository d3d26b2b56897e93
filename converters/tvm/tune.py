"""MetaSchedule tuning of TVM builds, with records that outlive the build.

The records folder holds one MetaSchedule JSON database (``database_workload.json`` +
``database_tuning_record.json``) per exact target (triple, ``-mcpu``, ``-mattr``, cores), in a subfolder
named after it: MetaSchedule looks a record up by workload (the fused TIR function, structurally hashed)
alone, whatever target measured it. The default folder is under edgekit's cache; ``--tuning-records DIR``
points at a folder that CI or teammates share. A workload is searched until the records hold ``--tune``
trials of it (a search cut short by its time budget goes on in the next conversion) or its search space
runs out: a model whose workloads are all done is compiled with no search at all. Candidates are measured
on this machine, or on boards of the target's device class through a TVM RPC tracker (``--device rpc://…``),
so that tuning for arm64 happens on arm64.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgekit.converters.tvm.schedule import apply_default_schedules, legalize

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
EXHAUSTED = "exhausted_workloads.json"  # edgekit's list of the workloads whose search space ran out
DEFAULT_MINUTES = 20.0  # the search's time budget without --tune-minutes (also added to the build's time limit)
ROUND = 32  # trials per task per turn (one evolutionary-search iteration): how far past its budget a search runs


@dataclass(frozen=True)
class TuneConfig:
    """``--tune TRIALS`` (per workload), ``--tune-minutes`` (the search's time budget), ``--tuning-records
    DIR`` and the boards."""

    trials: int
    minutes: float
    records: Path
    tracker: str | None = None  # "HOST:PORT/KEY": measure candidates on these boards
    cores: int | None = None  # the boards' cores (MetaSchedule parallelises for them)

    @classmethod
    def from_options(cls, options: dict) -> TuneConfig | None:
        if not options.get("tune_trials"):
            return None
        return cls(
            int(options["tune_trials"]),
            options.get("tune_minutes") or DEFAULT_MINUTES,
            Path(options["tuning_records"]),
            options.get("tune_tracker"),
            options.get("tune_cores"),
        )

    @property
    def num_cores(self) -> int:
        """The cores MetaSchedule parallelises for: the boards', else this machine's."""
        return self.cores or os.cpu_count() or 1

    def target(self, target: dict) -> dict:
        """``target`` as MetaSchedule tunes for it: with the cores it parallelises for."""
        return {**target, "num-cores": self.num_cores}

    def folder(self, target: dict) -> Path:
        """The records of ``target`` (one database per exact target, see the module's docstring)."""
        full = self.target(target)
        digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:10]
        name = f"{full['mtriple']}-{full.get('mcpu') or 'generic'}-{full['num-cores']}cores-{digest}"
        return self.records / re.sub(r"[^A-Za-z0-9._-]", "_", name)


def records_digest(folder: Path) -> str:
    """What a build tuned from ``folder`` depends on (its database files' bytes)."""
    h = hashlib.sha256()
    for name in DATABASE_FILES:
        path = folder / name
        h.update(path.read_bytes() if path.is_file() else b"-")
    return h.hexdigest()


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process at a time searches and writes a records folder (several builds may share it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


CPU_INTRINSICS = ("x86", "arm_cpu", "riscv_cpu")


def _cpu_tensor_intrinsics() -> None:
    """Register only TVM's CPU tensor intrinsics. MetaSchedule imports ``tvm.s_tir.tensor_intrin`` whole, and
    its CUDA, ROCm and Hexagon intrinsics (never used by a CPU target) take 60–70 s of TVMScript parsing here
    against ~3 s for the CPU ones: the package is entered without its ``__init__`` and given those. If that
    fails (another TVM layout), the package is imported as TVM does."""
    import importlib
    import importlib.util
    import sys

    import tvm.s_tir

    name = "tvm.s_tir.tensor_intrin"
    if name in sys.modules:
        return
    package = importlib.util.module_from_spec(importlib.util.find_spec(name))
    sys.modules[name] = tvm.s_tir.tensor_intrin = package
    try:
        for sub in CPU_INTRINSICS:
            importlib.import_module(f"{name}.{sub}")
    except Exception:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            del sys.modules[key]
        del tvm.s_tir.tensor_intrin
        importlib.import_module(name)


def _in_process_builder(cc: str | None, folder: Path):
    """A MetaSchedule builder that compiles candidates in this process, one thread per core (TVM's compiler
    and the linker run without the GIL: 2× on 2 cores). TVM's LocalBuilder starts fresh worker processes for
    every batch, and each spends 40–70 s importing all of TVM's tensor intrinsics here — past its 30 s limit, so every
    candidate failed. The library is linked with ``cc`` (a cross compiler for a board), so that the board
    loads a ready ``.so`` and needs no compiler."""
    from concurrent.futures import ThreadPoolExecutor

    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build

    def build_one(item) -> BuilderResult:
        try:
            lib = default_build(item.mod, item.target, None)
            path = os.path.join(tempfile.mkdtemp(dir=folder), "candidate.so")
            lib.export_library(path, **({"cc": cc} if cc else {}))
            return BuilderResult(path, None)
        except Exception as exc:  # a candidate that does not compile is a failed trial, not a failed build
            return BuilderResult(None, f"{type(exc).__name__}: {str(exc)[:400]}")

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
                return list(pool.map(build_one, build_inputs))

    return InProcessBuilder()


def _runner(config: TuneConfig):
    from tvm.s_tir import meta_schedule as ms

    evaluator = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
    if config.tracker is None:
        return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator)
    address, key = config.tracker.split("/", 1)
    host, port = address.rsplit(":", 1)
    rpc = ms.runner.RPCConfig(tracker_host=host, tracker_port=int(port), tracker_key=key, session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc, evaluator_config=evaluator, max_workers=1)


def _key(database, task) -> str:
    """The task's workload as the records know it (its structural hash)."""
    return database.commit_workload(task.dispatched[0]).as_json()[0]


def _tried(database, task) -> int:
    """Trials of the task in the records, failed candidates included (they were tried)."""
    if not database.has_workload(task.dispatched[0]):
        return 0
    workload = database.commit_workload(task.dispatched[0])
    return sum(r.workload.same_as(workload) for r in database.get_all_tuning_records())


def _exhausted(folder: Path) -> set[str]:
    path = folder / EXHAUSTED
    return set(json.loads(path.read_text())) if path.is_file() else set()


def _remaining(tasks: list, database, folder: Path, trials: int) -> dict[int, int]:
    """The trials each task still needs: ``trials`` less those in the records; none once its space ran out."""
    exhausted = _exhausted(folder)
    left = {}
    for i, task in enumerate(tasks):
        tried = _tried(database, task)
        known = database.has_workload(task.dispatched[0])
        if tried < trials and not (known and _key(database, task) in exhausted):
            left[i] = trials - tried
    return left


def _search(
    tasks: list,
    left: dict[int, int],
    config: TuneConfig,
    database,
    folder: Path,
    cc: str | None,
    logs: Path,
    deadline: float,
) -> tuple[int, bool]:
    """Search the tasks ``left`` names round-robin, at most ``ROUND`` trials per task per turn, until each
    has had its trials or the clock passes ``deadline`` (``--tune-minutes``). Every measured batch is
    committed to the records as it comes, so a search stopped by its budget keeps what it found, and the
    next conversion goes on where it stopped. Returns (trials measured, whether the budget stopped it)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    if not left:
        return 0, False
    _cpu_tensor_intrinsics()
    logs.mkdir(parents=True, exist_ok=True)
    builder, runner = _in_process_builder(cc, logs), _runner(config)
    # One cost model for every task: it learns across them.
    cost_model = ms.CostModel.create("xgb", num_tuning_cores=config.num_cores, tree_method="auto")
    left, measured, turns = dict(left), 0, 0
    while left:
        for i in list(left):
            if turns and time.perf_counter() >= deadline:  # the first turn always runs: a search finds something
                return measured, True
            turns += 1
            budget = min(ROUND, left[i])
            contexts, weights = extracted_tasks_to_tune_contexts([tasks[i]], str(logs))
            before = _tried(database, tasks[i])
            ms.tune_tasks(
                tasks=contexts,
                task_weights=weights,
                work_dir=str(logs),
                max_trials_global=budget,
                max_trials_per_task=budget,
                num_trials_per_iter=budget,
                builder=builder,
                runner=runner,
                database=database,
                cost_model=cost_model,
            )
            gained = _tried(database, tasks[i]) - before
            measured += gained
            left[i] -= gained
            if not gained:  # the space ran out: this workload is never searched again
                (folder / EXHAUSTED).write_text(json.dumps(sorted(_exhausted(folder) | {_key(database, tasks[i])})))
            if not gained or left[i] <= 0:
                del left[i]
    return measured, False


def tune_and_compile(mod, target: dict, config: TuneConfig, cc: str | None, work: Path):
    """Compile ``mod`` for ``target`` with the records' best schedules, searching first for the workloads
    with fewer than ``config.trials`` trials in the records. Returns (executable, what happened)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    tvm_target = tvm.target.Target(config.target(target))
    folder = config.folder(target)
    mod = legalize(mod, tvm_target)  # legalized and fused: the workloads the records are keyed by
    tasks = extract_tasks(mod, tvm_target)
    with _locked(folder):
        database = ms.database.JSONDatabase(work_dir=str(folder))
        left = _remaining(tasks, database, folder, config.trials)
        resumed = sum(n < config.trials for n in left.values())  # some trials already in the records
        started = time.perf_counter()
        trials, stopped = _search(
            tasks, left, config, database, folder, cc, work / "tuning_logs", started + 60 * config.minutes
        )
        tuning_s = time.perf_counter() - started
        with tvm_target, database:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        untuned = sum(database.query_tuning_record(t.dispatched[0], tvm_target, t.task_name) is None for t in tasks)
    executable = tvm.compile(apply_default_schedules(mod, tvm_target), target=tvm_target)
    stats = {
        "workloads": len(tasks),
        "from_records": len(tasks) - len(left),
        "searched": len(left),
        "resumed": resumed,
        "untuned": untuned,
        "trials": trials,
        "tuning_s": round(tuning_s, 1),
        "stopped_at_budget": stopped,
        "records": str(folder),
        "measured_on": (config.tracker and f"boards rpc://{config.tracker}") or "this machine",
        "target": str(tvm_target),
    }
    return executable, stats
