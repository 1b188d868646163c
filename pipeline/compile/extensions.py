"""Target-specific extensions of the one lowering and tuning pipeline, chosen from the target.

A target gets Relax passes that rewrite layers for its instructions (run inside `lower`), the
MetaSchedule space generator its kernels are tuned with, and the tensor intrinsics its tuning
records may name (registered by whoever tunes or replays those records, before they do). A new
instruction set is a package under pipeline/compile/ plus one entry in `extensions_for`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.compile import dot_product, packing, space
from pipeline.compile.aarch64 import intrinsic as aarch64
from pipeline.compile.x86 import intrinsic as x86


@dataclass(frozen=True)
class Extensions:
    name: str
    relax_passes: Callable[[], list]  # after the layout conversion, before fusion
    space_generator: Callable[[], object]
    register_intrinsics: Callable[[], None]


def _generic_space():
    from tvm.s_tir import meta_schedule as ms

    return ms.space_generator.PostOrderApply(sch_rules="llvm", postprocs="llvm",
                                             mutator_probs="llvm")


def _packed(dot: dot_product.DotProduct, name: str, depthwise_in_float: bool) -> Extensions:
    return Extensions(name, lambda: [packing.pack_for(dot, depthwise_in_float)],
                      lambda: space.space_generator(dot),
                      lambda: dot_product.register_intrinsics(dot))


GENERIC = Extensions("generic LLVM CPU", list, _generic_space, lambda: None)
X86_VNNI = _packed(x86.VNNI, "x86 AVX-512 VNNI int8", depthwise_in_float=True)
X86_AVX2 = _packed(x86.AVX2, "x86 AVX2 int8 (vpmaddwd)", depthwise_in_float=True)
# Depthwise layers stay in integers on NEON: LLVM's widening multiply-adds into int32 lanes do
# as many products per instruction as fmla does in float32, with no conversions.
AARCH64_NEON = _packed(aarch64.NEON, "aarch64 NEON int8 (smull/smlal/sadalp)",
                       depthwise_in_float=False)


def extensions_for(target) -> Extensions:
    """int8 layers packed and tensorized for VNNI, AVX2's vpmaddwd or NEON's widening
    multiplies, on CPUs that have them; elsewhere MetaSchedule's generic LLVM rules (its own x86
    VNNI rules never tensorized our HWIO int8 layers)."""
    dot = x86.dot_product_for(target) or aarch64.dot_product_for(target)
    return {x86.VNNI: X86_VNNI, x86.AVX2: X86_AVX2, aarch64.NEON: AARCH64_NEON}.get(dot, GENERIC)


def tune_context(**kwargs):
    """MetaSchedule's TuneContext, without the 30 s of GPU intrinsics it would import first."""
    from tvm.s_tir import meta_schedule as ms

    cpu_intrinsics_only()
    return ms.TuneContext(**kwargs)


INTRINSICS = "tvm.s_tir.tensor_intrin"


def cpu_intrinsics_only() -> None:
    """Make `import tvm.s_tir.tensor_intrin` (done by every TuneContext) import only the CPU
    intrinsics: the package's own __init__ also parses every CUDA, ROCm and Hexagon intrinsic,
    about 30 s of every tuning process. A stand-in package is put in its place, whose x86 and
    arm_cpu modules (the ones MetaSchedule's own LLVM rules name) are imported as usual; our
    spaces register their own (Extensions.register_intrinsics)."""
    import importlib
    import importlib.util
    import sys
    import types

    if INTRINSICS in sys.modules:
        return
    real = importlib.util.find_spec(INTRINSICS)
    stand_in = types.ModuleType(INTRINSICS, "CPU tensor intrinsics only (pipeline.compile)")
    stand_in.__path__ = list(real.submodule_search_locations)
    stand_in.__spec__ = importlib.util.spec_from_loader(INTRINSICS, loader=None,
                                                        is_package=True)
    stand_in.__spec__.submodule_search_locations = stand_in.__path__
    sys.modules[INTRINSICS] = stand_in
    parent = importlib.import_module(INTRINSICS.rpartition(".")[0])
    parent.tensor_intrin = stand_in
    for cpu in ("x86", "arm_cpu"):
        setattr(stand_in, cpu, importlib.import_module(f"{INTRINSICS}.{cpu}"))
