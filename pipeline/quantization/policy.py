"""Per-target int8 choices, apart from the rewrite that carries them out.

Everywhere: a tensor that is non-negative by construction (a ReLU output) is stored as uint8
(0..255): one more bit than int8, and a zero point of 0 keeps the convolutions' zero padding
exact. Any other tensor is int8 (-127..127) with zero point 0, except where the target's int8
instruction wants uint8 data: x86's VNNI (`vpdpbusd`) multiplies uint8 by int8 only, so there
the signed inputs of 1x1 convolutions and matmuls (which have no padding to keep at zero) are
stored as uint8 with zero point 128, and the offset (128 x each output channel's weight sum)
comes back out in the float shift after the integer sum.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.compile.x86.intrinsic import has_vnni


@dataclass(frozen=True)
class Int8Policy:
    name: str
    pointwise_zero_point_128: bool  # signed 1x1 / matmul inputs as uint8 + 128

    def zero_point(self, unsigned: bool, pointwise: bool) -> int:
        return 128 if self.pointwise_zero_point_128 and pointwise and not unsigned else 0


SIGNED = Int8Policy("int8 x int8", pointwise_zero_point_128=False)
VNNI = Int8Policy("x86 VNNI: uint8 x int8", pointwise_zero_point_128=True)


def policy_for(target) -> Int8Policy:
    return VNNI if has_vnni(target) else SIGNED
