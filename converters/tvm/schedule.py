"""How edgekit lowers a TVM graph for the CPU: convolutions in NHWC, constants folded, fused TIR kernels,
and default CPU schedules for the kernels MetaSchedule has no record for.

TVM 0.27's Relax CPU pipeline compiles a kernel nobody scheduled as written: one thread, scalar loops
(EfficientNet-Lite0 ran 30× slower than ONNX Runtime). Before compiling, edgekit applies
``ParallelVectorize``, a dlight schedule rule, to every kernel without a schedule: producers inlined,
the outer spatial loops fused and run in parallel, the reduction loops inside them and the innermost
spatial loop last, vectorised to the target's SIMD width — the loop order that lets a convolution
accumulate a vector of outputs per weight. (dlight's own CPU ``Reduction`` rule takes a convolution
with its bias for a softmax and keeps it on one thread: 560 ms against 64 ms.) Tuned records always
take precedence. Convolutions run in NHWC (channels innermost, the loop these schedules and MetaSchedule
vectorise): EfficientNet-Lite0 untuned 63 → 29 ms on a 2-core AVX2 host (one process, timed alone); in
NCHW the innermost loop of a 7×7 feature map is 7 wide.
"""

from __future__ import annotations

SCHEDULE_NOTE = "edgekit's default CPU schedule (parallel outer loops, vectorised inner loop)"
UNROLL_MAX_STEP = 64
NARROW_INTS = ("int8", "uint8", "int16", "uint16")
FOLD_LIMIT = 1024  # narrow integer constants up to this many elements are folded too (see fold_constants)


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


def clips_as_relax_ops(mod):
    """``mod`` with the ONNX frontend's Clip kernels written as Relax ``maximum``/``minimum``. The frontend
    lowers each Clip bound to an opaque TIR call (``emit_te``), which layout conversion cannot see through:
    in NHWC each ReLU6 was wrapped in two transposes and not fused into its convolution. A call is rewritten
    only where its kernel is exactly TOPI's maximum/minimum of its two arguments' shapes."""
    import tvm_ffi
    from tvm import relax, te, topi
    from tvm.ir import Op
    from tvm.relax.expr_functor import PyExprMutator, mutator

    call_tir = Op.get("relax.call_tir")
    ops = ((topi.maximum, relax.op.maximum), (topi.minimum, relax.op.minimum))

    def relax_op(kernel, args):
        if any(getattr(a.ty, "shape", None) is None or not hasattr(a.ty.shape, "values") for a in args):
            return None
        a, b = (te.placeholder(list(arg.ty.shape.values), arg.ty.dtype) for arg in args)
        for te_op, op in ops:
            if tvm_ffi.structural_equal(kernel.body, te.create_prim_func([a, b, te_op(a, b)]).body, map_free_vars=True):
                return op
        return None

    @mutator
    class Rewrite(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.same_as(call_tir) and isinstance(call.args[1], relax.Tuple) and len(call.args[1].fields) == 2:
                op = relax_op(mod[call.args[0]], call.args[1].fields)
                if op is not None:
                    return op(*call.args[1].fields)
            return call

    mod = mod.clone()
    mod["main"] = Rewrite().visit_expr(mod["main"])
    return relax.transform.DeadCodeElimination(["main"])(mod)


def convolutions_in_nhwc(mod):
    """``mod`` with its 2-D convolutions in NHWC (HWIO weights) and the layout carried through the ops
    around them. A graph TVM's layout conversion fails on (it ran out of memory on a transformer encoder
    with no convolution at all) stays as it is: the layout is an optimisation."""
    from tvm.relax import transform

    try:
        return transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
    except RuntimeError:  # TVM's errors are RuntimeErrors; std::bad_alloc arrives as one
        return mod


def fold_constants(mod, limit: int = FOLD_LIMIT):
    """``FoldConstant`` except for narrow integer weights (int8/int16 tensors of more than ``limit``
    elements): those are lifted to parameters while it runs and bound back after, since folding them would
    store them widened (MatMulInteger's int32 casts; MiniLM int8: 23 MB → 55 MB). Everything else is
    folded: a weight's transpose is computed once, not per inference, and the ONNX frontend's NaN checks of
    Clip bounds leave the convolution kernels, where MetaSchedule cannot tile them (``reverse-compute-at``)."""
    import math

    from tvm import relax
    from tvm.relax.expr_functor import PyExprMutator, mutator

    func, lifted = mod["main"], {}

    @mutator
    class Lift(PyExprMutator):
        def visit_generic_const_(self, const):
            if const.value.dtype not in NARROW_INTS or math.prod(const.value.shape) <= limit:
                return const
            name = f"edgekit_lifted_{len(lifted)}"
            lifted[name] = (relax.Var(name, const.ty), const.value)
            return lifted[name][0]

    body = Lift().visit_expr(func).body
    mod = mod.clone()
    params = list(func.params) + [var for var, _ in lifted.values()]
    mod["main"] = relax.Function(params, body, func.ret_ty, func.is_pure, func.attrs)
    mod = relax.transform.FoldConstant()(mod)
    return relax.transform.BindParams("main", {name: value for name, (_, value) in lifted.items()})(mod)


def legalize(mod, target):
    """``mod`` lowered to fused TIR kernels for ``target``: the form tuning records are keyed by and
    default schedules apply to: Clip as Relax ops, 2-D convolutions converted to NHWC (HWIO weights), then
    Relax's "zero" pipeline, its constant folding sparing narrow integer weights (``fold_constants``)."""
    import tvm
    from tvm.relax import transform

    mod = convolutions_in_nhwc(clips_as_relax_ops(mod))
    mod = fold_constants(mod)
    mod = transform.DecomposeOpsForInference()(mod)
    mod = transform.CanonicalizeBindings()(mod)
    with target:
        passes = [transform.LegalizeOps(), transform.AnnotateTIROpPattern(), transform.FuseOps(), transform.FuseTIR()]
        return tvm.transform.Sequential(passes)(mod)
