"""The int8 plan: which layers compute in int8, each tensor's range and each layer's
weight rounding, as calibration chose them; bundled with an artifact as JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pipeline.base.errors import UserError

Method = Literal["minmax", "percentile", "entropy", "mse"]


@dataclass(frozen=True)
class LayerId:
    """A quantizable layer: its op kind and its index among layers of that kind, in the order
    the model computes them. Written `conv2d_0`, ..., `matmul_0` in records and on the command
    line (--keep-float)."""

    kind: str  # conv2d | matmul
    index: int

    def __str__(self) -> str:
        return f"{self.kind}_{self.index}"

    @classmethod
    def parse(cls, text: str) -> LayerId:
        kind, _, index = text.rpartition("_")
        if not kind or not index.isdigit():
            raise UserError(f"'{text}' is not a layer name like conv2d_0 or matmul_0.")
        return cls(kind, int(index))

    @property
    def order(self) -> tuple[str, int]:
        return self.kind, self.index


@dataclass(frozen=True)
class Layer:
    name: str  # str(LayerId): conv2d_0, conv2d_1, ..., matmul_0
    tensor: int  # index of the input tensor it reads, among the calibrated tensors
    unsigned: bool  # that tensor is >= 0 by construction (ReLU output): quantized as uint8
    depthwise: bool = False  # a depthwise convolution: each output channel reads one input


@dataclass(frozen=True)
class TensorRange:
    absmax: float  # the largest |value| seen
    threshold: float  # the clipping threshold the method chose (<= absmax)
    noise: float  # power of the quantization error relative to the signal's, on the samples
    # Per channel (NCHW axis 1), for tensors only depthwise convolutions read, whose kernels
    # take a scale per channel. Calibration gives every channel the tensor's maximum
    # (calibration._unclipped says why); older records hold ranges fitted per channel.
    channel_thresholds: tuple[float, ...] | None = None
    # Mean of each channel (NCHW axis 1; the last axis of matmul inputs): the expected input
    # that bias correction multiplies with the weights' rounding error.
    channel_mean: tuple[float, ...] = ()


@dataclass(frozen=True)
class Int8Plan:
    layers: tuple[Layer, ...]
    ranges: tuple[TensorRange, ...]  # one per calibrated tensor
    method: Method
    # Per layer: its weights' offsets from nearest rounding (as pipeline.quantization.rounding
    # encodes them), chosen against the calibration data; "" (or no entry) for nearest rounding.
    rounding: tuple[str, ...] = ()


def plan_to_json(plan: Int8Plan) -> str:
    """The calibration result, bundled with the artifact: a rebuild applies it as recorded
    instead of calibrating again (float results may differ in the last bit on another CPU)."""
    import json
    from dataclasses import asdict

    return json.dumps(asdict(plan), indent=1, sort_keys=True) + "\n"


def plan_from_json(text: str, where: str) -> Int8Plan:
    import json

    try:
        raw = json.loads(text)
        ranges = []
        for r in raw["ranges"]:
            if r.get("channel_thresholds") is not None:
                r = {**r, "channel_thresholds": tuple(r["channel_thresholds"])}
            r = {**r, "channel_mean": tuple(r.get("channel_mean", ()))}
            ranges.append(TensorRange(**r))
        return Int8Plan(tuple(Layer(**layer) for layer in raw["layers"]), tuple(ranges),
                        raw["method"], tuple(raw.get("rounding", ())))
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(f"{where}: not a calibration record ({err}); the artifact is damaged."
                        ) from None
