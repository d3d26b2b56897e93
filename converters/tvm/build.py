"""Apache TVM builds: Relax ONNX frontend → ``tvm.compile`` for the target triple → shared library.

int8 builds compile the QDQ graph; if TVM cannot lower it, the build falls back to fp32 and says why.
A build for a foreign architecture is cross-linked, and a host library of the same graph is added so
that the graph can be checked on this machine too.
"""

from __future__ import annotations

import os
import platform
import shutil
from pathlib import Path

import onnx
from edgekit.converters.base import (
    BuildContext,
    BuildResult,
    Converter,
    SkipBuild,
    built_from,
    io_by_name,
    write_manifest,
)
from edgekit.converters.tvm.schedule import SCHEDULE_NOTE, apply_default_schedules, legalize
from edgekit.converters.tvm.tune import TuneConfig, records_digest, tune_and_compile

from edgekit.errors import one_line


def host_target() -> dict:
    import tvm

    return {
        "kind": "llvm",
        "mtriple": f"{platform.machine()}-linux-gnu",
        "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
    }


def compile_library(
    onnx_path,
    shapes: dict,
    target: dict,
    path,
    cc: str | None,
    tune: TuneConfig | None = None,
    work: Path | None = None,
) -> dict | None:
    """Import ``onnx_path`` with the Relax frontend, compile for ``target`` (tuned with MetaSchedule when
    ``tune`` is given, edgekit's default CPU schedules for the rest) and export a shared library; returns
    the tuning's account, if any."""
    import tvm
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict=shapes, keep_params_in_input=False)
    stats = None
    if tune is None:
        tvm_target = tvm.target.Target(target)
        executable = tvm.compile(apply_default_schedules(legalize(mod, tvm_target), tvm_target), target=tvm_target)
    else:
        executable, stats = tune_and_compile(mod, target, tune, cc, work or Path(path).parent)
    executable.export_library(str(path), **({"cc": cc} if cc else {}))
    return stats


INTEGER_SHARE_MIN = 0.8  # TVM int8 is offered only where this share of the compute layers runs on integers


class TvmConverter(Converter):
    def cache_inputs(self, ctx: BuildContext) -> dict:
        """A tuned build also depends on the tuning records it starts from (its target's)."""
        tune = TuneConfig.from_options(ctx.options)
        return {"tuning_records": records_digest(tune.folder(self._targets(ctx)[1]))} if tune else {}

    @staticmethod
    def _targets(ctx: BuildContext) -> tuple[dict, dict]:
        """The TVM target, and the one of the library the (emulated or real Linux) device runs."""
        on_host = ctx.target.arch == platform.machine()
        target = host_target() if on_host and not ctx.target.cpu else ctx.target.tvm_target()
        # Android: the library the emulated (glibc) device runs is a linux-gnu twin of the Android one.
        linux_triple = f"{ctx.target.arch}-linux-gnu" if ctx.target.platform == "android" else ctx.target.triple
        return target, {**target, "mtriple": linux_triple}

    def extra_build_s(self, ctx: BuildContext) -> float:
        tune = TuneConfig.from_options(ctx.options)
        return 60 * tune.minutes if tune else 0.0

    def _tuning(self, ctx: BuildContext, on_host: bool) -> tuple[TuneConfig | None, str]:
        """The tuning this build gets, or why it gets none."""
        tune = TuneConfig.from_options(ctx.options)
        if tune is None:
            return None, (
                f"untuned: {SCHEDULE_NOTE}, no MetaSchedule tuning records (--tune N); latency is not TVM's best"
            )
        if not on_host and tune.tracker is None:
            return None, (
                f"untuned: tuning for {ctx.target.arch} measures candidates on {ctx.target.arch} boards — pass "
                f"--device rpc://TRACKER:PORT/KEY with such boards (not emulated ones) and --tune again"
            )
        return tune, ""

    @staticmethod
    def _integer_share(graph: Path) -> float:
        from edgekit.executed import onnx_counts, summary

        return summary(*onnx_counts(onnx.load(str(graph), load_external_data=False)), "")["int8_share"]

    def build(self, ctx: BuildContext) -> BuildResult:
        if ctx.precision == "fp16":
            raise SkipBuild("tvm: fp16 builds are not offered (TVM's CPU codegen has no fp16 speed-up on this target)")
        self.check_precision(ctx.precision)
        on_host = ctx.target.arch == platform.machine()
        cc = None
        if not on_host:
            cc = shutil.which(ctx.target.cross_compiler or "")
            if cc is None:
                package = "g++-" + ctx.target.cross_compiler.removesuffix("-g++")
                raise RuntimeError(f"cross compiler '{ctx.target.cross_compiler}' not found; apt-get install {package}")
        shapes = {s.name: list(s.shape) for s in ctx.inputs}
        target, device_target = self._targets(ctx)
        source, precision, quant, notes = ctx.onnx_fp32, "fp32", "", []
        share = self._integer_share(ctx.onnx_qdq) if ctx.precision == "int8" else 1.0
        if share < INTEGER_SHARE_MIN:  # an int8 row must compute in integers: this graph's would not
            notes.append(
                f"tvm int8 is not offered for this graph: only {share:.0%} of its compute layers would run on "
                f"integer kernels (< {INTEGER_SHARE_MIN:.0%}); built in fp32 instead"
            )
        elif ctx.precision == "int8":
            source, precision = ctx.onnx_qdq, "int8"
            quant = f"int8 dynamic graph (ORT); TVM lowers its integer MatMuls ({share:.0%} of the compute layers)"
            if ctx.float_nodes:
                quant += f"; {len(ctx.float_nodes)} layer(s) kept in float (accuracy fallback)"
        libs = {ctx.target.arch: f"model_{precision}.{device_target['mtriple']}.so"}
        if not on_host:
            libs[platform.machine()] = f"model_{precision}.{platform.machine()}-linux-gnu.so"
        tune, untuned = self._tuning(ctx, on_host)
        try:
            tuning = self._compile_all(source, shapes, ctx, device_target, cc, libs, tune)
        except Exception as exc:
            if source == ctx.onnx_fp32:
                raise
            notes.append(f"TVM could not lower the int8 graph ({one_line(exc, 160)}); built from fp32 instead")
            precision, quant, source = "fp32", "", ctx.onnx_fp32
            libs = {k: v.replace("int8", "fp32") for k, v in libs.items()}
            tuning = self._compile_all(source, shapes, ctx, device_target, cc, libs, tune)
        if not on_host:
            notes.append(
                f"{ctx.target.arch} library cross-linked with {ctx.target.cross_compiler}; "
                f"the host library ({platform.machine()}) is the same graph compiled for this machine"
            )
        if ctx.target.platform == "android":
            libs["android"], note = self._android(source, shapes, ctx, target, precision)
            notes.append(note)
        notes.append(untuned or self._tuned_note(tuning, on_host))
        result = BuildResult(self.name, precision, libs, notes=notes, quantization=quant)
        inputs, outputs = io_by_name(ctx.inputs), io_by_name(ctx.outputs)
        write_manifest(ctx, result, inputs, outputs, tvm_target=target, tuning=tuning)
        return result

    @staticmethod
    def _tuned_note(t: dict, on_host: bool) -> str:
        resumed = f", {t['resumed']} of them going on from the records" if t.get("resumed") else ""
        searched = (
            f"{t['searched']} searched now{resumed} ({t['trials']} measured trials in {t['tuning_s']:.0f} s on "
            f"{t['measured_on']})"
            if t["searched"]
            else "no search needed"
        )
        left = f"; {t['untuned']} without a record get {SCHEDULE_NOTE}" if t["untuned"] else ""
        if t.get("stopped_at_budget"):
            left += " (the search stopped at its time budget, --tune-minutes: convert again to go on)"
        twin = "" if on_host else f"; the host library is untuned ({SCHEDULE_NOTE})"
        return (
            f"tuned with MetaSchedule: {t['workloads']} workloads, {t['from_records']} from the records, {searched}"
            f"{left}{twin}; records: {t['records']}"
        )

    @staticmethod
    def _android(source, shapes, ctx: BuildContext, target: dict, precision: str) -> tuple[str, str]:
        """The Android library: linked by the NDK's clang ($TVM_NDK_CC), else an object archive to link later."""
        ndk_cc = os.environ.get("TVM_NDK_CC")
        name = f"model_{precision}.{ctx.target.triple}." + ("so" if ndk_cc else "tar")
        compile_library(source, shapes, target, ctx.out_dir / name, ndk_cc)
        if ndk_cc:
            return name, f"Android library linked with $TVM_NDK_CC ({ndk_cc}); the phone runs it, the emulator its twin"
        return name, (
            "Android: object archive (no NDK here: set TVM_NDK_CC to an NDK clang++ to get a .so); the emulated "
            "device runs the glibc-linked twin of the same kernels"
        )

    @staticmethod
    def _compile_all(
        source, shapes, ctx: BuildContext, target: dict, cc, libs: dict[str, str], tune: TuneConfig | None
    ) -> dict | None:
        stats = compile_library(source, shapes, target, ctx.out_dir / libs[ctx.target.arch], cc, tune, ctx.work_dir)
        if platform.machine() != ctx.target.arch:
            compile_library(source, shapes, host_target(), ctx.out_dir / libs[platform.machine()], None)
        return stats

    def executed(self, build_dir: Path, manifest: dict, measured: dict, work: Path) -> dict:
        """TVM's ONNX frontend dequantizes QDQ weights/activations to float kernels; integer MatMuls stay integer."""
        from edgekit.executed import onnx_counts, summary

        model = onnx.load(str(built_from(build_dir, manifest)), load_external_data=False)
        return summary(*onnx_counts(model), "TVM Relax lowering of the int8 ONNX graph")

    def layer_tensors(self, build_dir: Path, manifest: dict, feed: dict, wanted: set[str]) -> tuple[dict, str]:
        from edgekit.diff import onnx_intermediates

        graph = built_from(build_dir, manifest)
        return onnx_intermediates(graph, feed), f"ONNX graph {graph.name} (what {self.name} was built from)"

    def missing_ops(self, graph: Path, ops: dict[str, int], module=None) -> dict[str, int]:
        """ONNX operators the Relax frontend has no converter for."""
        from tvm.relax.frontend.onnx import onnx_frontend

        known = set(onnx_frontend._get_convert_map())
        return {op: n for op, n in ops.items() if op not in known}
