"""int8 on x86 CPUs: our dot-product intrinsics, the weight layout they read, and which one a
target gets.

- AVX-512 VNNI (`vpdpbusd`): 16 int32 outputs, each the sum of 4 uint8 x int8 products, per
  instruction. Weights packed [N/16][K/4][16][4] int8.
- AVX2 (`vpmaddwd`): 8 int32 outputs, each the sum of 2 int16 x int16 products. The 8-bit inputs
  are widened to int16 (zero- or sign-extended: exact for uint8 and int8 data); the weights are
  stored widened, packed [N/8][K/2][8][2] int16. AVX2's byte multiply (`vpmaddubsw`) would do
  twice the products per instruction but saturates its int16 pair sums (255 x 127 x 2 > 32767)
  unless activations or weights give up a bit; `vpmaddwd` is exact and still does 16
  multiply-adds per instruction against AVX2 FMA's 8 in float32.

Why TVM 0.27's own VNNI path never built here (measured on this machine):
- its intrinsic `dot_16x4_vnni` calls `llvm.x86.avx512.vpdpbusd.512` with <16 x i32> operands,
  and the LLVM inside TVM 0.27 declares them <64 x i8>: every candidate failed LLVM's verifier;
- the intrinsic reads weights as [16 outputs][4 inputs] contiguous; our HWIO weights give
  [4 inputs][16 outputs], so no tensorization matched;
- MetaSchedule vectorized the spatial loop just above the tensorized block, which is already a
  vector instruction: "Cannot broadcast lanes=16 ... to N".
So: our intrinsics, 1x1 convolutions and matmuls rewritten to read weights pre-packed, and a
postprocessor that unrolls such loops instead (pipeline.compile.x86.space)."""

from __future__ import annotations

from pipeline.compile.dot_product import DotProduct, has_feature


def has_vnni(target) -> bool:
    return has_feature(target, "avx512vnni")


def dot_product_for(target) -> DotProduct | None:
    if has_vnni(target):
        return VNNI
    if has_feature(target, "avx2"):
        return AVX2
    return None


# Defined here, not imported from tvm.s_tir.tensor_intrin: importing that package parses every
# GPU intrinsic (tens of seconds), in each builder process.

def _description(dot: DotProduct, data_dtype: str):
    """What the instruction computes: c[i] += a[k] * b[i, k], in int32."""
    from tvm.script import tirx as T

    lanes, group, weight_dtype = dot.lanes, dot.group, dot.weight_dtype

    @T.prim_func(s_tir=True)
    def desc(a: T.Buffer((group,), data_dtype, offset_factor=1),
             b: T.Buffer((lanes, group), weight_dtype, offset_factor=1),
             c: T.Buffer((lanes,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:lanes], a[0:group], b[0:lanes, 0:group])
            T.writes(c[0:lanes])
            for i, k in T.grid(lanes, group):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    c[vi] = c[vi] + T.cast(a[vk], "int32") * T.cast(b[vi, vk], "int32")

    return desc


def _vnni_functions(data_dtype: str):
    from tvm.script import tirx as T

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

    return _description(VNNI, data_dtype), impl


def _avx2_functions(data_dtype: str):
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def impl(a: T.Buffer((2,), data_dtype, offset_factor=1),
             b: T.Buffer((8, 2), "int16", offset_factor=1),
             c: T.Buffer((8,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(c[0:8], a[0:2], b[0:8, 0:2])
            T.writes(c[0:8])
            # The two data elements widened to int16 (as their type says) form one int32, which
            # every lane of the int16 product gets.
            pair = T.reinterpret(T.Cast("int16x2", a.vload([0], f"{data_dtype}x2")),
                                 dtype="int32")
            c[T.ramp(T.int32(0), 1, 8)] = c.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                T.reinterpret(T.broadcast(pair, 8), dtype="int16x16"),
                b.vload([0, 0], dtype="int16x16"),
                dtype="int32x8")

    return _description(AVX2, data_dtype), impl


VNNI = DotProduct("vnni", lanes=16, group=4, weight_dtype="int8", data_dtypes=("uint8",),
                  functions=_vnni_functions)
AVX2 = DotProduct("avx2", lanes=8, group=2, weight_dtype="int16", data_dtypes=("uint8", "int8"),
                  functions=_avx2_functions)
