"""The target-level lowering shared by tuning and building.

Tuning records are keyed by the exact TIR of each fused kernel, so `pipeline.tune` and
`pipeline.build` must lower through the very same passes or the records will not apply.
"""

from __future__ import annotations

# NHWC activations with HWIO weights: the channel axis is innermost, so depthwise and 1x1
# convolutions (most of a mobile net) vectorize over channels instead of over small 7x7 planes.
CPU_LAYOUTS = {"relax.nn.conv2d": ["NHWC", "HWIO"]}


def lower(mod, target):
    """Relax with high-level ops -> Relax calling fused TIR kernels (what MetaSchedule tunes).

    Weights are marked layout-free so that tuned kernels may ask for their weights pre-tiled
    (MetaSchedule's RewriteLayout); `apply_database` then folds that re-tiling into the
    constants at build time, so it costs nothing at run time.
    """
    import tvm
    from tvm import relax

    from pipeline import vnni

    # int8 layers in the packed layout VNNI tensorization needs, on CPUs that have it; the
    # intrinsic must be registered wherever tuning records that name it are replayed.
    packing = [vnni.pack_for_vnni()] if vnni.has_vnni(target) else []
    if packing:
        vnni.register_intrinsic()
    with target:
        return tvm.transform.Sequential([
            relax.transform.ConvertLayout(CPU_LAYOUTS),
            relax.transform.FoldConstant(),
            *packing,
            relax.transform.DecomposeOpsForInference(),
            relax.transform.CanonicalizeBindings(),
            relax.get_pipeline("zero"),
            relax.transform.AttachAttrLayoutFreeBuffers(),
        ])(mod)


def apply_database(lowered_mod, target, database):
    """Swap in the tuned kernels, then fold their weight re-tiling into the constants."""
    import tvm
    from tvm import relax

    with target, database:
        return tvm.transform.Sequential([
            relax.transform.MetaScheduleApplyDatabase(enable_warning=False),
            relax.transform.SplitLayoutRewritePreproc(),
            relax.transform.FoldConstant(),
        ])(lowered_mod)


def compile_for_host(mod):
    """`mod` compiled for this machine (untuned): a function from one input to its outputs."""
    import tvm
    from tvm import relax

    from pipeline.devices import detect_host_target

    target = tvm.target.Target(detect_host_target())
    executable = tvm.compile(lower(mod, target), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())

    def run(x):  # numpy in, list of numpy out
        result = vm["main"](tvm.runtime.tensor(x))
        if hasattr(result, "numpy"):
            return [result.numpy()]
        return [r.numpy() for r in result]

    return run
