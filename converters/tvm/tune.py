"""MetaSchedule tuning of TVM builds, with records that outlive the build.

The records live in one MetaSchedule JSON database (``database_workload.json`` +
``database_tuning_record.json``), keyed by workload (the fused TIR function, structurally hashed) and by
the exact target (triple, ``-mcpu``, ``-mattr``, cores). The default folder is under edgekit's cache;
``--tuning-records DIR`` points at a folder that CI or teammates share. Only the workloads that have no
record for the target are searched: a model whose workloads are all in the records is compiled with no
search at all. Candidates are measured on this machine, or on boards of the target's device class through
a TVM RPC tracker (``--device rpc://…``), so that tuning for arm64 happens on arm64.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

DATABASE_FILES = ("database_workload.json", "database_tuning_record.json")
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


def _in_process_builder(cc: str | None, folder: Path):
    """A MetaSchedule builder that compiles candidates in this process. TVM's LocalBuilder starts fresh
    worker processes for every batch, and each spends ~40 s importing TVM's tensor intrinsics here — past
    its 30 s limit, so every candidate failed. The library is linked with ``cc`` (a cross compiler for a
    board), so that the board loads a ready ``.so`` and needs no compiler."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_build

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            results = []
            for item in build_inputs:
                try:
                    lib = default_build(item.mod, item.target, None)
                    path = os.path.join(tempfile.mkdtemp(dir=folder), "candidate.so")
                    lib.export_library(path, **({"cc": cc} if cc else {}))
                    results.append(BuilderResult(path, None))
                except Exception as exc:  # a candidate that does not compile is a failed trial, not a failed build
                    results.append(BuilderResult(None, f"{type(exc).__name__}: {str(exc)[:400]}"))
            return results

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


def _search(tasks: list, config: TuneConfig, database, cc: str | None, logs: Path, deadline: float) -> tuple[int, bool]:
    """Search ``tasks`` round-robin, at most ``ROUND`` trials per task per turn, until each has ``config.trials``
    measured trials or the clock passes ``deadline`` (``--tune-minutes``). Every measured batch is committed
    to the records as it comes, so a search stopped by its budget keeps what it found, and the workloads it
    did not reach are searched by the next conversion. Returns (trials measured, whether the budget stopped it)."""
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extracted_tasks_to_tune_contexts

    if not tasks:
        return 0, False
    logs.mkdir(parents=True, exist_ok=True)
    builder, runner = _in_process_builder(cc, logs), _runner(config)
    cores = config.cores or os.cpu_count() or 1
    cost_model = ms.CostModel.create("xgb", num_tuning_cores=cores, tree_method="auto")  # learns across tasks

    def measured(task) -> int:
        return len(database.get_top_k(database.commit_workload(task.dispatched[0]), 10**6))

    done = dict.fromkeys(range(len(tasks)), 0)
    turns = 0
    while True:
        pending = [i for i, n in done.items() if n < config.trials]
        if not pending:
            return sum(done.values()), False
        for i in pending:
            if turns and time.perf_counter() >= deadline:  # the first turn always runs: a search finds something
                return sum(done.values()), True
            turns += 1
            budget = min(ROUND, config.trials - done[i])
            contexts, weights = extracted_tasks_to_tune_contexts([tasks[i]], str(logs))
            before = measured(tasks[i])
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
            # A turn that measures nothing new (the space is exhausted) ends that task's search.
            gained = measured(tasks[i]) - before
            done[i] = done[i] + gained if gained else config.trials


def tune_and_compile(mod, target: dict, config: TuneConfig, cc: str | None, work: Path):
    """Compile ``mod`` for ``target`` with the records' best schedules, searching first (``config.trials``
    trials per workload) for the workloads that have none.
    Returns (executable, what happened)."""
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.relax_integration import extract_tasks

    tvm_target = tvm.target.Target({**target, "num-cores": config.cores or os.cpu_count() or 1})
    mod = relax.transform.DecomposeOpsForInference()(mod)
    mod = relax.transform.CanonicalizeBindings()(mod)
    with tvm_target:
        mod = relax.get_pipeline("zero")(mod)  # legalized and fused: the workloads the records are keyed by
    tasks = extract_tasks(mod, tvm_target)
    with _locked(config.records):
        database = ms.database.JSONDatabase(work_dir=str(config.records))
        missing = [t for t in tasks if database.query_tuning_record(t.dispatched[0], tvm_target, t.task_name) is None]
        started = time.perf_counter()
        trials, stopped = _search(missing, config, database, cc, work / "tuning_logs", started + 60 * config.minutes)
        tuning_s = time.perf_counter() - started
        with tvm_target, database:
            mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
        still_missing = sum(
            database.query_tuning_record(t.dispatched[0], tvm_target, t.task_name) is None for t in tasks
        )
    executable = tvm.compile(mod, target=tvm_target)
    stats = {
        "workloads": len(tasks),
        "from_records": len(tasks) - len(missing),
        "searched": len(missing),
        "untuned": still_missing,
        "trials": trials,
        "tuning_s": round(tuning_s, 1),
        "stopped_at_budget": stopped,
        "records": str(config.records),
        "measured_on": (config.tracker and f"boards rpc://{config.tracker}") or "this machine",
        "target": str(tvm_target),
    }
    return executable, stats
