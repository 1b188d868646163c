"""Calibration methods as observers: each turns the absolute values calibration saw at a tensor
into the clipping threshold(s) its int8 scale is set from.

`minmax` keeps the largest value seen; `percentile` clips at a percentile of |x|; `entropy`
takes the threshold whose 8-bit histogram has the least KL divergence from the float one (as
TensorRT's calibrator); `mse` the threshold whose clipping and rounding error has the least
power on the samples. A new method is a class here and an entry in `OBSERVERS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import numpy as np

from pipeline.base.errors import UserError
from pipeline.quantization.plan import Method, TensorRange

METHODS: tuple[str, ...] = get_args(Method)
HISTOGRAM_BINS = 2048
MSE_CANDIDATES = 81  # thresholds tried by the mse method, from the maximum down to a fifth
MSE_SAMPLES = 262144  # samples per tensor (or channel) the mse method searches on


@dataclass(frozen=True)
class Observer:
    """A threshold from samples of a tensor's |x|."""

    method: Method

    def threshold(self, values: np.ndarray, absmax: float, levels: int) -> float:
        raise NotImplementedError

    def tensor_range(self, values: np.ndarray, absmax: float, levels: int) -> TensorRange:
        threshold = absmax if absmax == 0.0 else self.threshold(values, absmax, levels)
        return TensorRange(absmax, threshold, relative_noise(values, threshold, levels))


@dataclass(frozen=True)
class MinMax(Observer):
    method: Method = "minmax"

    def threshold(self, values, absmax, levels):
        return absmax


@dataclass(frozen=True)
class Percentile(Observer):
    method: Method = "percentile"
    percentile: float = 99.99

    def threshold(self, values, absmax, levels):
        return float(min(absmax, np.percentile(values, self.percentile)))


@dataclass(frozen=True)
class Entropy(Observer):
    method: Method = "entropy"

    def threshold(self, values, absmax, levels):
        return kl_threshold(values, absmax, levels)


@dataclass(frozen=True)
class Mse(Observer):
    method: Method = "mse"

    def threshold(self, values, absmax, levels):
        return float(mse_thresholds(values[None], np.array([absmax]), levels)[0])


OBSERVERS = {"minmax": MinMax, "percentile": Percentile, "entropy": Entropy, "mse": Mse}


def observer_for(method: str, percentile: float = 99.99) -> Observer:
    if method not in OBSERVERS:
        raise UserError(f"--calibration-method '{method}' is not one of {', '.join(METHODS)}.")
    kind = OBSERVERS[method]
    return kind(percentile=percentile) if issubclass(kind, Percentile) else kind()


def relative_noise(values: np.ndarray, threshold, levels: int) -> float:
    """Error power of quantizing |values| at `threshold` (a float, or one per row) over their
    power."""
    threshold = np.asarray(threshold, dtype="float64")
    if not np.all(threshold > 0):
        return 0.0
    scale = threshold / levels
    error = values - np.minimum(np.round(values / scale), levels) * scale
    return float(np.sum(error.astype("float64") ** 2) / max(np.sum(values.astype("float64") ** 2),
                                                            1e-30))


def mse_thresholds(rows: np.ndarray, maxima: np.ndarray, levels: int) -> np.ndarray:
    """Per row of |values|, the threshold among MSE_CANDIDATES fractions of its maximum whose
    quantization error (rounding below it, clipping above) has the least power."""
    rng = np.random.default_rng(0)
    if rows.shape[1] > MSE_SAMPLES:  # the search costs candidates x samples
        rows = rows[:, rng.integers(0, rows.shape[1], MSE_SAMPLES)]
    rows = rows.astype("float64")
    best, best_error = maxima.astype("float64"), np.full(len(rows), np.inf)
    for fraction in np.linspace(1.0, 0.2, MSE_CANDIDATES):  # ties keep the widest range
        threshold = np.maximum(maxima * fraction, 1e-30)[:, None]
        scale = threshold / levels
        error = np.sum((rows - np.minimum(np.round(rows / scale), levels) * scale) ** 2, axis=1)
        better = (error < best_error) & (maxima > 0)  # an all-zero row keeps its maximum
        best = np.where(better, threshold[:, 0], best)
        best_error = np.where(better, error, best_error)
    return best


def kl_threshold(values: np.ndarray, absmax: float, levels: int) -> float:
    """The threshold whose `levels`-bin quantized histogram is closest (KL) to the float one.

    Exact zeros (half of every ReLU output) are left out: with a zero point of 0 they quantize
    exactly at any threshold, and their spike in the first bin would pull the threshold down."""
    hist, edges = np.histogram(values[values != 0], bins=HISTOGRAM_BINS, range=(0.0, absmax))
    hist = hist.astype("float64")
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = hist[i:].sum()
    best, best_kl = HISTOGRAM_BINS, np.inf
    for i in range(levels + 1, HISTOGRAM_BINS + 1, 4):
        reference = hist[:i].copy()
        reference[-1] += tail[i]  # what clipping at edges[i] does to the outliers
        bounds = np.linspace(0, i, levels + 1).astype(int)
        used = (hist[:i] > 0).astype("float64")
        sums = np.add.reduceat(hist[:i], bounds[:-1])
        counts = np.add.reduceat(used, bounds[:-1])
        expanded = np.repeat(sums / np.maximum(counts, 1), np.diff(bounds)) * used
        p = reference / reference.sum()
        q = expanded / max(expanded.sum(), 1e-30)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = i, kl
    return float(edges[best])
