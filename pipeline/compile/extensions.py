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
