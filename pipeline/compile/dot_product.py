"""A CPU's int8 dot-product instruction, as the weight packing (pipeline.compile.packing) and the
tuning space (pipeline.compile.space) see it; each instruction set's package defines its own
(pipeline.compile.x86, pipeline.compile.aarch64)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DotProduct:
    """One tensorized step: `lanes` int32 outputs, each summing `group` products of a data
    element (one of `data_dtypes`) and a weight stored as `weight_dtype`. Weights are packed
    [N/lanes][K/pair][lanes][pair]: `pair` is `group` unless the instruction reads its inputs
    in smaller runs. `functions(data_dtype)` gives the TIR description and implementation."""
    name: str
    lanes: int
    group: int
    weight_dtype: str
    data_dtypes: tuple[str, ...]
    functions: Callable[[str], tuple] = field(compare=False, repr=False)
    pair: int = 0

    @property
    def packed_group(self) -> int:
        return self.pair or self.group

    def kernel(self, kind: str, data_dtype: str) -> str:
        """The name of a packed layer's kernel (part of its tuning workload)."""
        return f"{kind}_{_SHORT[data_dtype]}{_SHORT[self.weight_dtype]}"

    def intrinsic(self, data_dtype: str) -> str:
        """The name tuning records refer to it by."""
        return f"edge_{self.name}_{self.kernel('', data_dtype)[1:]}i32_{self.lanes}x{self.group}"

    @property
    def intrinsics(self) -> tuple[str, ...]:
        return tuple(self.intrinsic(dtype) for dtype in self.data_dtypes)


_SHORT = {"uint8": "u8", "int8": "i8", "int16": "i16"}


def has_feature(target, feature: str) -> bool:
    from tvm.target import codegen

    return str(target.kind.name) == "llvm" and bool(codegen.target_has_features(feature, target))


def register_intrinsics(dot: DotProduct) -> None:
    """Register `dot`'s intrinsics once per process (tuning replays them, building too)."""
    from tvm.s_tir import TensorIntrin

    for dtype in dot.data_dtypes:
        if TensorIntrin.get(dot.intrinsic(dtype), allow_missing=True) is None:
            TensorIntrin.register(dot.intrinsic(dtype), *dot.functions(dtype))
