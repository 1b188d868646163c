"""int8 on x86 CPUs with AVX-512 VNNI: our dot-product intrinsic, the layout it needs, and the
MetaSchedule rules that tensorize with it.

Why TVM 0.27's own VNNI path never built here (measured on this machine):
- its intrinsic `dot_16x4_vnni` calls `llvm.x86.avx512.vpdpbusd.512` with <16 x i32> operands,
  and the LLVM inside TVM 0.27 declares them <64 x i8>: every candidate failed LLVM's verifier;
- the intrinsic reads weights as [16 outputs][4 inputs] contiguous; our HWIO weights give
  [4 inputs][16 outputs], so no tensorization matched;
- MetaSchedule vectorized the spatial loop just above the tensorized block, which is already a
  vector instruction: "Cannot broadcast lanes=16 ... to N".
So: our intrinsic with byte-vector operands, 1x1 convolutions and matmuls rewritten to read
weights pre-packed as [N/16][K/4][16][4], and a postprocessor that unrolls such loops instead."""

from __future__ import annotations

INTRIN = "edge_vnni_u8i8i32_16x4"


LANES, GROUP = 16, 4  # int32 outputs per instruction, bytes summed into each


def has_vnni(target) -> bool:
    from tvm.target import codegen

    return str(target.kind.name) == "llvm" and bool(
        codegen.target_has_features("avx512vnni", target))


def register_intrinsic() -> None:
    """Register INTRIN once per process (tuning replays it, building too)."""
    from tvm.s_tir import TensorIntrin

    if TensorIntrin.get(INTRIN, allow_missing=True) is None:
        desc, impl = _intrinsic_functions()
        TensorIntrin.register(INTRIN, desc, impl)


def _intrinsic_functions():
    # Defined here, not imported from tvm.s_tir.tensor_intrin: importing that package parses
    # every GPU intrinsic (tens of seconds), in each builder process.
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((4,), "uint8", offset_factor=1),
             b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            for i, k in T.grid(16, 4):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((4,), "uint8", offset_factor=1),
             b: T.Buffer((16, 4), "int8", offset_factor=1),
             c: T.Buffer((16,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:16], a[0:4], b[0:16, 0:4])
            T.writes(c[0:16])
            a_i32 = T.reinterpret(a.vload([0], "uint8x4"), dtype="int32")
            c[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                c.vload([0], dtype="int32x16"),
                T.reinterpret(T.broadcast(a_i32, 16), dtype="uint8x64"),
                b.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    return desc, impl
