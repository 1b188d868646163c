"""What an artifact is keyed by: its device class, its model and its numeric variant.

One `Variant` owns its name (the path segment and the manifest's word), the `--quantize` word
that asks for it, and how far a compiled model's output may be from its reference. One
`ArtifactKey` builds every path that depends on the three: tuning logs, artifacts, releases.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.base.errors import UserError
from pipeline.base.files import plain_name


class Variant(enum.Enum):
    FP32 = "fp32"
    INT8 = "int8"
    FP16 = "fp16"

    def __str__(self) -> str:  # as users write it: "int8", never "Variant.INT8"
        return self.value

    @classmethod
    def parse(cls, text: str, what: str = "variant") -> Variant:
        try:
            return cls(text)
        except ValueError:
            raise UserError(f"{what} '{text}' is not one of "
                            f"{', '.join(v.value for v in cls)}.") from None

    @classmethod
    def from_quantize(cls, mode: str) -> Variant:
        """The variant `--quantize MODE` asks for ('none' keeps fp32)."""
        return cls.FP32 if mode == "none" else cls.parse(mode, "--quantize")

    @property
    def quantize_mode(self) -> str:
        return "none" if self is Variant.FP32 else self.value

    @property
    def quantized(self) -> bool:
        return self is not Variant.FP32

    def tolerance(self, reference: np.ndarray) -> float:
        """How far a compiled model's output may be from its reference on the same input,
        relative to the output's largest magnitude. fp32: float rounding only. int8 and fp16
        are checked against the same quantized model compiled for this machine: a float
        epilogue rounded differently (FMA contraction) may move one int8 value by a step, which
        carries through."""
        relative = 1e-3 if self is Variant.FP32 else 2e-2
        return relative * float(np.max(np.abs(reference))) + 1e-4


QUANTIZE_MODES = tuple(v.quantize_mode for v in Variant)


@dataclass(frozen=True)
class ArtifactKey:
    device: str
    model: str
    variant: Variant

    def __post_init__(self) -> None:
        plain_name(self.device, "device class")
        plain_name(self.model, "model name")

    @property
    def id(self) -> str:
        return f"{self.device}/{self.model}-{self.variant.value}"

    def under(self, root: Path) -> Path:
        """The key's folder under `root`: ROOT/<device>/<model>-<variant>."""
        return root / self.device / f"{self.model}-{self.variant.value}"
