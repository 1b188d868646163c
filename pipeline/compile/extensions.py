"""Target-specific extensions of the one lowering and tuning pipeline, chosen from the target.

A target gets Relax passes that rewrite layers for its instructions (run inside `lower`), the
MetaSchedule space generator its kernels are tuned with, and the tensor intrinsics its tuning
records may name (registered by whoever tunes or replays those records, before they do). A new
instruction set is a package under pipeline/compile/ plus one entry in `extensions_for`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.compile.x86 import intrinsic, packing, space


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


def _x86(dot: intrinsic.DotProduct, name: str) -> Extensions:
    return Extensions(name, lambda: [packing.pack_for(dot)], lambda: space.space_generator(dot),
                      lambda: intrinsic.register_intrinsics(dot))


GENERIC = Extensions("generic LLVM CPU", list, _generic_space, lambda: None)
X86_VNNI = _x86(intrinsic.VNNI, "x86 AVX-512 VNNI int8")
X86_AVX2 = _x86(intrinsic.AVX2, "x86 AVX2 int8 (vpmaddwd)")


def extensions_for(target) -> Extensions:
    """int8 layers packed and tensorized for VNNI, or AVX2's vpmaddwd, on CPUs that have them;
    elsewhere MetaSchedule's generic LLVM rules (its own x86 VNNI rules never tensorized our
    HWIO int8 layers)."""
    dot = intrinsic.dot_product_for(target)
    return {intrinsic.VNNI: X86_VNNI, intrinsic.AVX2: X86_AVX2}.get(dot, GENERIC)
