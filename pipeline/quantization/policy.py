"""Per-target int8 choices, apart from the rewrite that carries them out.

Everywhere: a tensor that is non-negative by construction (a ReLU output) is stored as uint8
(0..255): one more bit than int8, and a zero point of 0 keeps the convolutions' zero padding
exact. Any other tensor is int8 (-127..127) with zero point 0, except where the target's int8
instruction wants uint8 data: x86's VNNI (`vpdpbusd`) multiplies uint8 by int8 only, so there
the signed inputs of 1x1 convolutions and matmuls (which have no padding to keep at zero) are
stored as uint8 with zero point 128, and the offset (128 x each output channel's weight sum)
comes back out in the float shift after the integer sum. aarch64's widening multiplies
(`smull`) take int8 by int8 only, so there it is the other way round: the ReLU outputs that feed
1x1 convolutions and matmuls are stored as int8 = uint8 - 128, and the shift adds 128 x each
output channel's weight sum back.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.compile.aarch64 import intrinsic as aarch64
from pipeline.compile.x86.intrinsic import has_vnni


@dataclass(frozen=True)
class Int8Policy:
    name: str
    signed_pointwise_offset: int = 0  # added to signed 1x1 / matmul inputs (VNNI: +128)
    unsigned_pointwise_offset: int = 0  # added to unsigned ones (aarch64: -128)

    def zero_point(self, unsigned: bool, pointwise: bool) -> int:
        if not pointwise:
            return 0
        return self.unsigned_pointwise_offset if unsigned else self.signed_pointwise_offset

    def stored_dtype(self, unsigned: bool, pointwise: bool) -> str:
        offset = self.zero_point(unsigned, pointwise)
        return "uint8" if (unsigned and offset == 0) or offset > 0 else "int8"


SIGNED = Int8Policy("int8 x int8")
VNNI = Int8Policy("x86 VNNI: uint8 x int8", signed_pointwise_offset=128)
NEON = Int8Policy("aarch64 NEON: int8 x int8", unsigned_pointwise_offset=-128)


def policy_for(target) -> Int8Policy:
    if has_vnni(target):
        return VNNI
    return NEON if aarch64.dot_product_for(target) is not None else SIGNED
