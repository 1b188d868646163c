"""Error-compensating rounding of int8 weights (GPTQ: Frantar et al., 2022, "Accurate
Post-Training Quantization for Generative Pre-trained Transformers").

Rounding each weight to its nearest integer minimizes the weights' error, not the layer's
output error. The output error of one output channel is err . x for its input patch x, so its
power is errᵀ H err with H = E[x xᵀ], the second moment of the patches the layer reads. GPTQ
rounds the columns one at a time and spreads each rounding error over the columns not rounded
yet, in the direction H says cancels it (the README's quantization section has the figures).

The result is stored with the calibration record as offsets from nearest rounding (most are
0, nearly all others +-1, so they compress well): a rebuild applies them
as recorded, with no calibration data and no float arithmetic whose last bit could differ on
another CPU.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass

import numpy as np

MAX_COLUMNS = 4096  # larger inputs per output channel (H of 128+ MB) keep nearest rounding
DAMPING = 0.01  # of the mean of H's diagonal, added to it: H from few samples is singular


@dataclass(frozen=True)
class Geometry:
    """How a layer reads its input: the patch each output element multiplies by its weights."""
    kind: str  # "matmul", "pointwise" (1x1 conv, no padding or stride), "conv", "depthwise"
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilation: tuple[int, int] = (1, 1)


def patch_moment(value: np.ndarray, geometry: Geometry) -> np.ndarray:
    """sum of x xᵀ over the patches of `value` (one input: (1, C, H, W), or (..., K) for a
    matmul): (C*kh*kw)² for a convolution, (C, kh*kw, kh*kw) for a depthwise one."""
    if geometry.kind == "matmul":
        rows = value.reshape(-1, value.shape[-1]).astype("float64")
        return rows.T @ rows
    image = value[0].astype("float64")
    if geometry.kind == "pointwise":
        columns = image.reshape(image.shape[0], -1)
        return columns @ columns.T
    # Each tap's view copied into one contiguous (C, kh*kw, P) array: a batched matmul of it
    # takes about a third of the time of one over sliding-window patches for 3x3 kernels
    # (5x5: four fifths).
    taps = _taps(image, geometry)
    taps = np.stack(taps, axis=1).reshape(image.shape[0], len(taps), -1)
    if geometry.kind == "depthwise":
        return np.matmul(taps, taps.transpose(0, 2, 1))
    patches = taps.reshape(-1, taps.shape[-1])  # (C*kh*kw, P)
    return patches @ patches.T


def _taps(image: np.ndarray, geometry: Geometry) -> list[np.ndarray]:
    """What each kernel tap reads, (C, Ho, Wo) per tap, taps in (kh, kw) row-major order."""
    top, left, bottom, right = geometry.padding
    padded = np.pad(image, ((0, 0), (top, bottom), (left, right)))
    (kh, kw), (dh, dw), (sh, sw) = geometry.kernel, geometry.dilation, geometry.strides
    rows = (padded.shape[1] - (kh - 1) * dh - 1) // sh + 1
    cols = (padded.shape[2] - (kw - 1) * dw - 1) // sw + 1
    return [padded[:, i * dh:i * dh + (rows - 1) * sh + 1:sh,
                   j * dw:j * dw + (cols - 1) * sw + 1:sw]
            for i in range(kh) for j in range(kw)]


def columns(geometry: Geometry, weight_shape: tuple[int, ...]) -> int:
    """The size of one output channel's patch (H is its square)."""
    if geometry.kind == "matmul":
        return weight_shape[0]
    return int(np.prod(weight_shape[1:]))


def gptq(weight: np.ndarray, scale: np.ndarray, moment: np.ndarray) -> np.ndarray:
    """int8 values of `weight` (rows: output channels, columns: the patch; (B, rows, columns)
    for B independent groups) on the per-row `scale`, rounded against `moment` (columns² or
    (B, columns, columns)); the columns are taken in order of decreasing input power."""
    batched = weight.ndim == 3
    w = (weight if batched else weight[None]).astype("float64") / \
        (scale if batched else scale[None]).astype("float64")[..., None]
    h = (moment if batched else moment[None]).astype("float64").copy()
    diagonal = np.einsum("bii->bi", h)
    diagonal += DAMPING * diagonal.mean(axis=1, keepdims=True) + (diagonal == 0)
    order = np.argsort(-diagonal.mean(axis=0), kind="stable")
    w, h = w[:, :, order], h[:, order][:, :, order]
    # Upper Cholesky factor of H^-1: row i holds how column i's error moves the later columns.
    inverse_factor = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    quantized = np.zeros_like(w)
    for i in range(w.shape[2]):
        quantized[:, :, i] = np.clip(np.round(w[:, :, i]), -127, 127)
        error = (w[:, :, i] - quantized[:, :, i]) / inverse_factor[:, i, i][:, None]
        w[:, :, i + 1:] -= error[:, :, None] * inverse_factor[:, i, i + 1:][:, None, :]
    result = np.empty_like(quantized)
    result[:, :, order] = quantized
    return (result if batched else result[0]).astype("int8")


def round_weight(weight: np.ndarray, scale: np.ndarray, moment: np.ndarray,
                 geometry: Geometry) -> np.ndarray:
    """`weight` (OIHW, or (K, N) for a matmul) in int8 on `scale` (one per output channel,
    broadcastable to `weight`), rounded by gptq against `moment` from patch_moment."""
    rows = scale.reshape(-1)
    if geometry.kind == "matmul":
        return gptq(weight.T, rows, moment).T
    if geometry.kind == "depthwise":
        return gptq(weight.reshape(len(weight), 1, -1), rows[:, None], moment
                    ).reshape(weight.shape)
    return gptq(weight.reshape(len(weight), -1), rows, moment).reshape(weight.shape)


def encode(offsets: np.ndarray) -> str:
    """Offsets from nearest rounding, as text for the calibration record (int16: two int8
    values can be 254 apart; the high bytes, nearly all 0 or 255, cost little compressed)."""
    return base64.b64encode(zlib.compress(offsets.astype("<i2").tobytes(), 6)).decode("ascii")


def decode(text: str, shape: tuple[int, ...]) -> np.ndarray:
    raw = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype="<i2")
    if raw.size != int(np.prod(shape)):
        raise ValueError(f"{raw.size} rounding offsets for a weight of shape {shape}")
    return raw.reshape(shape)
