"""int8 weights: per-channel symmetric scales, rounding (nearest, sum-preserving, or
recorded offsets from pipeline.quantization.rounding)."""

from __future__ import annotations

import numpy as np

import pipeline.quantization.rounding as rounding
from pipeline.quantization.graph import channel_axis
from pipeline.quantization.rounding import Geometry


def quantize_weight(weight: np.ndarray, axis: int, offsets: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8: (scale broadcastable to `weight`, int8 values): nearest
    rounding plus `offsets` (the calibration's compensated rounding,
    pipeline.quantization.rounding).

    Without offsets, depthwise filters (OIHW with one input channel) are rounded so that each
    one's integers sum to its rounded sum: such a filter sees one channel of mostly positive
    ReLU outputs, so its response to that channel's local mean must survive rounding (the
    README's quantization section has the figures)."""
    scale = weight_scale(weight, axis)
    rounded = nearest(weight, scale)
    if offsets is not None:
        rounded = rounded + offsets
    elif weight.ndim == 4 and axis == 0 and weight.shape[1] == 1:
        exact = (weight / scale).reshape(len(weight), -1)
        rounded = _round_preserving_sums(exact, rounded.reshape(len(weight), -1)
                                         ).reshape(weight.shape)
    return scale, np.clip(rounded, -127, 127).astype("int8")


def nearest(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Nearest rounding in int8's range: what recorded rounding offsets are counted from."""
    return np.clip(np.round(weight / scale), -127, 127)


def weight_scale(weight: np.ndarray, axis: int) -> np.ndarray:
    reduce_axes = tuple(a for a in range(weight.ndim) if a != axis)
    scale = np.abs(weight).max(axis=reduce_axes, keepdims=True) / 127.0
    return np.where(scale > 0, scale, 1.0).astype("float32")


def compensated_rounding(call, geometry: Geometry, moment: np.ndarray) -> str:
    """The offsets from nearest rounding that pipeline.quantization.rounding chooses for `call`'s
    weights against `moment` (the second moment of its input patches, read as `geometry`
    says), as record text."""
    weight = call.args[1].value.numpy()
    scale = weight_scale(weight, channel_axis(call))
    chosen = rounding.round_weight(weight, scale, moment, geometry)
    return rounding.encode(chosen.astype("int16") - nearest(weight, scale).astype("int16"))


def _round_preserving_sums(exact: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    """`rounded` with, in each row, the entries whose rounding lost most moved one step, until
    the row sums to round(sum of `exact`): each entry stays within one step of its value."""
    residual = exact - rounded
    deficit = (np.round(exact.sum(axis=1)) - rounded.sum(axis=1))[:, None]
    rank = np.argsort(np.argsort(-residual, axis=1, kind="stable"), axis=1)  # 0: largest
    up = rank < deficit  # the largest positive residuals round up instead
    down = (residual.shape[1] - 1 - rank) < -deficit  # the most negative ones round down
    return rounded + up - down

