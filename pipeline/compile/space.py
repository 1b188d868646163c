"""MetaSchedule's CPU rules with our dot-product intrinsics, and the postprocessor that unrolls
a vectorized loop over a tensorized block instead (why: pipeline.compile.x86.intrinsic)."""

from __future__ import annotations

from pipeline.compile.dot_product import DotProduct


def space_generator(dot: DotProduct):
    """MetaSchedule's x86 default rules (generic for any LLVM CPU), with `dot`'s intrinsics and
    our postprocessor."""
    from tvm.s_tir import meta_schedule as ms

    rule, post = ms.schedule_rule, ms.postproc
    reuse = rule.ReuseType(req="may", levels=[1, 2], scope="global")
    rules = [
        rule.ApplyCustomRule(),
        rule.InlineConstantScalars(),
        rule.AutoInline(into_producer=False, into_consumer=True, inline_const_tensor=True,
                        disallow_if_then_else=True, require_injective=True,
                        require_ordered=True, disallow_op=["tirx.exp"]),
        rule.AddRFactor(max_jobs_per_core=16, max_innermost_factor=64),
        *(rule.MultiLevelTilingWithIntrin(name, structure="SSRSRS", max_innermost_factor=64,
                                          reuse_write=reuse) for name in dot.intrinsics),
        rule.MultiLevelTiling(structure="SSRSRS", max_innermost_factor=64, reuse_write=reuse),
        rule.ParallelizeVectorizeUnroll(max_jobs_per_core=16, max_vectorize_extent=64,
                                        unroll_max_steps=[0, 16, 64, 512], unroll_explicit=True),
        rule.RandomComputeLocation(),
    ]
    postprocs = [post.DisallowDynamicLoop(), post.RewriteParallelVectorizeUnroll(),
                 _unroll_vector_loops_over_blocks(), post.RewriteReductionBlock(),
                 post.RewriteTensorize(vectorize_init_loop=True), post.RewriteLayout()]
    return ms.space_generator.PostOrderApply(sch_rules=rules, postprocs=postprocs,
                                             mutator_probs="llvm")


def _unroll_vector_loops_over_blocks():
    """A postprocessor: a vectorized loop that holds a block with blocks inside (a block to be
    tensorized) is unrolled instead. Unrolled, its iterations become independent accumulators,
    which is what hides the instruction's latency."""
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.tirx import ForKind

    @tvm.ir.utils.derived_object
    class UnrollVectorLoopsOverBlocks(ms.postproc.PyPostproc):
        def _initialize_with_tune_context(self, context) -> None:
            pass

        def apply(self, sch) -> bool:
            def walk(block, outer_loops) -> None:
                children = sch.get_child_blocks(block)
                loops = [] if outer_loops is None else list(sch.get_loops(block))
                if children and outer_loops is not None:
                    for loop in loops[len(outer_loops):]:
                        if sch.get(loop).kind == ForKind.VECTORIZED:
                            sch.unroll(loop)
                for child in children:
                    walk(child, loops)

            for gvar in sch.mod.get_global_vars():
                walk(sch.get_sblock("root", func_name=gvar.name_hint), None)
            return True

        def clone(self):
            return UnrollVectorLoopsOverBlocks()

    return UnrollVectorLoopsOverBlocks()
