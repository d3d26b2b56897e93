"""Default CPU schedules for the kernels MetaSchedule has no record for.

TVM 0.27's Relax CPU pipeline compiles a kernel nobody scheduled as written: one thread, scalar loops
(EfficientNet-Lite0 ran 30× slower than ONNX Runtime). Before compiling, edgekit applies
``ParallelVectorize``, a dlight schedule rule, to every kernel without a schedule: producers inlined,
the outer spatial loops fused and run in parallel, the reduction loops inside them and the innermost
spatial loop last, vectorised to the target's SIMD width — the loop order that lets a convolution
accumulate a vector of outputs per weight. (dlight's own CPU ``Reduction`` rule takes a convolution
with its bias for a softmax and keeps it on one thread: 560 ms against 64 ms.) Tuned records always
take precedence.
"""

from __future__ import annotations

SCHEDULE_NOTE = "edgekit's default CPU schedule (parallel outer loops, vectorised inner loop)"
UNROLL_MAX_STEP = 64


def _rule():
    """``ParallelVectorize`` as a dlight CPU schedule rule (built lazily: TVM is imported on first use)."""
    from tvm import s_tir, tirx
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.base import try_inline
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
    from tvm.target.codegen import llvm_get_vector_width

    class ParallelVectorize(CPUScheduleRule):
        """Inline producers; per remaining block: parallel fused outer spatial loops, then the reduction
        loops, then the innermost spatial loop, split to the SIMD width and vectorised. A kernel it
        cannot schedule stays as it was."""

        def apply(self, func, target, _tunable):
            if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
                return None
            try:
                return self._schedule(func, max(1, llvm_get_vector_width(target) // 32))
            except (RuntimeError, ValueError):  # ScheduleError is a RuntimeError
                return None

        @staticmethod
        def _schedule(func, lanes: int):
            sch = s_tir.Schedule(func)
            infos = normalize_prim_func(sch)
            if infos is None:
                return None
            scheduled = 0
            for info in try_inline(sch, infos):
                kinds = info.dom_kind()
                loops = sch.get_loops(info.block_rv)
                if len(loops) != len(kinds) or "S" not in kinds or "O" in kinds:
                    continue
                spatial = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "S"]
                reduction = [loop for loop, kind in zip(loops, kinds, strict=True) if kind == "R"]
                inner = spatial[-1]
                sch.reorder(*spatial[:-1], *reduction, inner)
                if len(spatial) > 1:
                    outer = sch.fuse(*spatial[:-1])
                    sch.parallel(outer)
                    sch.annotate(outer, "pragma_auto_unroll_max_step", UNROLL_MAX_STEP)
                    sch.annotate(outer, "pragma_unroll_explicit", 1)
                extent = sch.get(inner).extent
                if isinstance(extent, tirx.IntImm):
                    if extent.value > lanes and extent.value % lanes == 0:
                        sch.vectorize(sch.split(inner, [None, lanes])[1])
                    elif extent.value <= 2 * lanes:
                        sch.vectorize(inner)
                if reduction:  # after vectorising: a decomposed update block is no longer a reduction block
                    sch.decompose_reduction(info.block_rv, reduction[0])
                scheduled += 1
            return sch if scheduled else None

    return ParallelVectorize()


def apply_default_schedules(mod, target):
    """Schedule every kernel of the legalized, fused ``mod`` that has none yet (MetaSchedule's records
    mark theirs as scheduled) for ``target`` (a ``tvm.target.Target``)."""
    from tvm.s_tir import dlight

    with target:
        return dlight.ApplyDefaultSchedule(_rule())(mod)


def legalize(mod, target):
    """``mod`` lowered to fused TIR kernels for ``target``: the form tuning records are keyed by and
    default schedules apply to. Relax's "zero" pipeline without its constant folding, which would store
    int8 weights widened to int32 (MatMulInteger's casts; MiniLM int8: 23 MB → 55 MB)."""
    import tvm
    from tvm.relax import transform

    mod = transform.DecomposeOpsForInference()(mod)
    mod = transform.CanonicalizeBindings()(mod)
    with target:
        passes = [transform.LegalizeOps(), transform.AnnotateTIROpPattern(), transform.FuseOps(), transform.FuseTIR()]
        return tvm.transform.Sequential(passes)(mod)
