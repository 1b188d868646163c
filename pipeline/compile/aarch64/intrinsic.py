"""int8 on aarch64 CPUs without the dot-product extension (Cortex-A53, Cortex-A72): NEON's
widening multiplies.

Four int32 outputs, each the sum of 4 int8 x int8 products, in three instructions:
`smull` (8 int16 products of two 8-byte vectors), `smlal` (8 more added into them) and `sadalp`
(adjacent int16 pairs added into the 4 int32 accumulators). Summing two products in int16 is
exact when one operand is in [-127, 127] and the other in [-128, 127] (2 x 128 x 127 = 32512),
which is what the int8 policy stores (pipeline.quantization.policy: weights symmetric, ReLU
outputs as int8 - 128 at the inputs of these layers). The data pairs are broadcast with one
`ld1r` each; the weights are packed [N/4][K/2][4][2], so one 8-byte load holds 4 outputs' pairs.

Without this, LLVM widens every product to int32 (`smull`/`smlal` into 32-bit lanes: 4 products
per instruction, as many as float32's `fmla`), and int8 is no faster than float."""

from __future__ import annotations

from pipeline.compile.dot_product import DotProduct, has_feature


def dot_product_for(target) -> DotProduct | None:
    aarch64 = str(target.attrs.get("mtriple", "")).startswith("aarch64")
    return NEON if aarch64 and has_feature(target, "neon") else None


def _functions(data_dtype: str):
    from tvm.script import tirx as T

    # Every index a loop variable, as MetaSchedule's auto-tensorization requires: the data
    # arrive as (K/2, 2) runs (pipeline.compile.packing).
    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((2, 2), "int8", offset_factor=1),
             b: T.Buffer((2, 4, 2), "int8", offset_factor=1),
             c: T.Buffer((4,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:4], a[0:2, 0:2], b[0:2, 0:4, 0:2])
            T.writes(c[0:4])
            for i, run, k in T.grid(4, 2, 2):
                with T.sblock("update"):
                    vi, vrun, vk = T.axis.remap("SRR", [i, run, k])
                    c[vi] = c[vi] + T.cast(a[vrun, vk], "int32") * T.cast(b[vrun, vi, vk],
                                                                         "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2, 2), "int8", offset_factor=1),
             b: T.Buffer((2, 4, 2), "int8", offset_factor=1),
             c: T.Buffer((4,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:4], a[0:2, 0:2], b[0:2, 0:4, 0:2])
            T.writes(c[0:4])
            # Data elements k, k+1 as one int16, in every lane: [a_k, a_k+1] x 4.
            first = T.reinterpret(T.broadcast(T.reinterpret(a.vload([0, 0], "int8x2"),
                                                            dtype="int16"), 4), dtype="int8x8")
            second = T.reinterpret(T.broadcast(T.reinterpret(a.vload([1, 0], "int8x2"),
                                                             dtype="int16"), 4), dtype="int8x8")
            pairs = (T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), first,
                b.vload([0, 0, 0], dtype="int8x8"), dtype="int16x8")
                + T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"), second,
                    b.vload([1, 0, 0], dtype="int8x8"), dtype="int16x8"))
            c[T.ramp(T.int32(0), 1, 4)] = c.vload([0], dtype="int32x4") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), pairs,
                dtype="int32x4")

    return desc, impl


NEON = DotProduct("neon", lanes=4, group=4, weight_dtype="int8", data_dtypes=("int8",),
                  functions=_functions, pair=2)
