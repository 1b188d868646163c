"""The target-level lowering shared by tuning and building.

Tuning records are keyed by the exact TIR of each fused kernel, so `pipeline.tune` and
`pipeline.build` must lower through the very same passes or the records will not apply."""

from __future__ import annotations

import logging

from pipeline.compile.extensions import extensions_for
from pipeline.compile.layout import LayoutReport, convert_layout

log = logging.getLogger(__name__)


def lower(mod, target, nhwc: bool = True):
    """Relax with high-level ops -> Relax calling fused TIR kernels (what MetaSchedule tunes).

    Weights are marked layout-free so that tuned kernels may ask for their weights pre-tiled
    (MetaSchedule's RewriteLayout); `apply_database` then folds that re-tiling into the
    constants at build time, so it costs nothing at run time.

    `nhwc=False` keeps the model's own layout: for modules only this machine runs, untuned,
    whose kernels no record could match anyway.
    """
    lowered, layout = lower_with_layout(mod, target, nhwc)
    if nhwc and (layout.transposes_added or not layout.converted):
        log.info(layout.describe())
    return lowered


def lower_with_layout(mod, target, nhwc: bool = True) -> tuple[object, LayoutReport]:
    """`lower`, and what the NHWC conversion cost (logged by `lower`, returned here)."""
    import tvm
    from tvm import relax

    from pipeline.frontend.passes import fold_constants

    with target:
        mod, layout = convert_layout(mod) if nhwc else (mod, LayoutReport(0, (), (), False))
        return tvm.transform.Sequential([
            fold_constants(),
            *extensions_for(target).relax_passes(),
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
            # A reshape left on its own (the (K/2, 2) data runs of aarch64's packed layers after
            # a kernel FuseOps cannot extend) is a view, not a copy kernel to tune.
            relax.transform.RewriteDataflowReshape(),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod), layout


def apply_database(lowered_mod, target, database):
    """Swap in the tuned kernels, then fold their weight re-tiling into the constants."""
    import tvm
    from tvm import relax

    from pipeline.frontend.passes import fold_constants

    extensions_for(target).register_intrinsics()  # the records replay schedules that name them
    with target, database:
        return tvm.transform.Sequential([
            relax.transform.MetaScheduleApplyDatabase(enable_warning=False),
            relax.transform.SplitLayoutRewritePreproc(),
            fold_constants(),
        ])(lowered_mod)
