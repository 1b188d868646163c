"""int8 calibration: run the float model on sample data and choose each quantized tensor's
clipping threshold (pipeline.int8 holds the plan it returns and the rewrite that applies it).

Activation ranges come from running the float model on the calibration data (compiled for this
machine) and reading the absolute values that reach each quantized layer: `minmax` (largest
seen), `percentile` (e.g. the 99.99th), `entropy` (the clipping threshold whose 8-bit
histogram has the least KL divergence from the float one, as in TensorRT's calibrator), or `mse`
(the threshold whose clipping and rounding error has the least power on the samples).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from pipeline import rounding
from pipeline.errors import UserError
from pipeline.int8 import (
    Int8Plan,
    Method,
    TensorRange,
    compensated_rounding,
    quantizable_layers,
    weight_geometry,
)
from pipeline.lowering import compile_for_host

SAMPLES_PER_INPUT = 32768  # absolute values kept per tensor and calibration input
HISTOGRAM_BINS = 2048
MSE_CANDIDATES = 81  # thresholds tried by the mse method, from the maximum down to a fifth
MSE_SAMPLES = 262144  # samples per tensor (or channel) the mse method searches on


def calibrate(mod, inputs: np.ndarray, method: Method, percentile: float = 99.99,
              out=None) -> Int8Plan:
    """Run the float model on `inputs` (N, ...) and choose a clipping threshold per tensor,
    and the rounding of each layer's weights against the inputs that reach it."""
    out = out or sys.stderr
    layers, calls, tensors = quantizable_layers(mod["main"])
    if not layers:
        raise UserError("The model has no convolution or matmul with constant weights: nothing "
                        "to quantize to int8.")
    run = compile_for_host(_expose(mod, tensors))
    rng = np.random.default_rng(0)
    per_channel = [all(layer.depthwise for layer in layers if layer.tensor == t)
                   for t in range(len(tensors))]
    absmax = np.zeros(len(tensors))
    samples: list[list[np.ndarray]] = [[] for _ in tensors]
    sums: list[np.ndarray | float] = [0.0] * len(tensors)
    geometries = [_compensable(call) for call in calls]
    moments: list[np.ndarray | float] = [0.0] * len(layers)
    for i, x in enumerate(inputs):
        _, *values = run(x[None])
        for k, (layer, geometry) in enumerate(zip(layers, geometries, strict=True)):
            if geometry is not None:
                moments[k] = moments[k] + rounding.patch_moment(values[layer.tensor], geometry)
        for t, value in enumerate(values):
            sums[t] = sums[t] + _channel_means(value)
            magnitude = np.abs(value[0]).astype("float32")
            absmax[t] = max(absmax[t], float(magnitude.max()))
            if per_channel[t]:  # (channels, samples) kept apart per channel
                columns = magnitude.reshape(magnitude.shape[0], -1)
                keep = max(1, SAMPLES_PER_INPUT // columns.shape[0])
                if columns.shape[1] > keep:
                    columns = columns[:, rng.integers(0, columns.shape[1], keep)]
                samples[t].append(columns)
                continue
            flat = magnitude.reshape(-1)
            if flat.size > SAMPLES_PER_INPUT:
                flat = flat[rng.integers(0, flat.size, SAMPLES_PER_INPUT)]
            samples[t].append(flat)
        if (i + 1) % 16 == 0 or i + 1 == len(inputs):
            print(f"  calibration: {i + 1}/{len(inputs)} inputs through {len(layers)} layers",
                  file=out)
    unsigned = {layer.tensor: layer.unsigned for layer in layers}
    ranges = []
    for t in range(len(tensors)):
        levels = 255 if unsigned[t] else 127
        means = tuple(float(m) for m in np.asarray(sums[t]) / len(inputs))
        if per_channel[t]:
            ranges.append(replace(_channel_range(np.concatenate(samples[t], axis=1), method,
                                                 percentile, levels), channel_mean=means))
            continue
        values = np.concatenate(samples[t])
        threshold = _threshold(values, float(absmax[t]), method, percentile, levels)
        ranges.append(TensorRange(float(absmax[t]), threshold,
                                  _relative_noise(values, threshold, levels), None, means))
    print(f"  rounding the weights of {sum(g is not None for g in geometries)} of {len(layers)} "
          "layers against the calibration data (GPTQ)", file=out)
    rounded = tuple("" if geometry is None else compensated_rounding(call, geometry, moment)
                    for call, geometry, moment in zip(calls, geometries, moments, strict=True))
    return Int8Plan(tuple(layers), tuple(ranges), method, rounded)


def _compensable(call) -> rounding.Geometry | None:
    geometry = weight_geometry(call)
    fits = geometry is not None and rounding.columns(
        geometry, tuple(int(d) for d in call.args[1].ty.shape)) <= rounding.MAX_COLUMNS
    return geometry if fits else None


def _channel_means(value: np.ndarray) -> np.ndarray:
    axis = 1 if value.ndim == 4 else value.ndim - 1
    return value.astype("float64").mean(axis=tuple(a for a in range(value.ndim) if a != axis))


def _channel_range(columns: np.ndarray, method: Method, percentile: float, levels: int
                   ) -> TensorRange:
    """Thresholds per channel: the largest value (minmax), the least error power (mse), or the
    percentile (the entropy method's histogram search per channel would cost minutes; the
    percentile stands in)."""
    maxima = columns.max(axis=1)
    if method == "minmax":
        thresholds = maxima
    elif method == "mse":
        thresholds = _mse_thresholds(columns, maxima, levels)
    else:
        thresholds = np.minimum(maxima, np.percentile(columns, percentile, axis=1))
    thresholds = np.where(thresholds > 0, thresholds, 1.0)
    return TensorRange(float(maxima.max()), float(thresholds.max()),
                       _relative_noise(columns, thresholds[:, None], levels),
                       tuple(float(t) for t in thresholds))


def _relative_noise(values: np.ndarray, threshold, levels: int) -> float:
    """Error power of quantizing |values| at `threshold` (a float, or one per row) over their
    power."""
    threshold = np.asarray(threshold, dtype="float64")
    if not np.all(threshold > 0):
        return 0.0
    scale = threshold / levels
    error = values - np.minimum(np.round(values / scale), levels) * scale
    return float(np.sum(error.astype("float64") ** 2) / max(np.sum(values.astype("float64") ** 2),
                                                            1e-30))


def _threshold(values: np.ndarray, absmax: float, method: Method, percentile: float,
               levels: int) -> float:
    if absmax == 0.0 or method == "minmax":
        return absmax
    if method == "percentile":
        return float(min(absmax, np.percentile(values, percentile)))
    if method == "mse":
        return float(_mse_thresholds(values[None], np.array([absmax]), levels)[0])
    return _kl_threshold(values, absmax, levels)


def _mse_thresholds(rows: np.ndarray, maxima: np.ndarray, levels: int) -> np.ndarray:
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


def _kl_threshold(values: np.ndarray, absmax: float, levels: int) -> float:
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


def _expose(mod, tensors: list):
    """The model with every calibrated tensor added to its outputs."""
    import tvm
    from tvm import relax

    func = mod["main"]
    # Dataflow variables cannot leave their block: outputs of the block become plain Vars,
    # found again by position since names are not unique.
    where = {}
    for b, block in enumerate(func.body.blocks):
        for i, binding in enumerate(block.bindings):
            where[binding.var] = (b, i)
    positions = [where.get(t) for t in tensors]
    plain = relax.transform.ToNonDataflow()(mod)["main"]
    outputs = [plain.params[func.params.index(t)] if pos is None
               else plain.body.blocks[pos[0]].bindings[pos[1]].var
               for t, pos in zip(tensors, positions, strict=True)]
    body = relax.BlockBuilder().normalize(
        relax.SeqExpr(plain.body.blocks, relax.Tuple([plain.body.body, *outputs])))
    return tvm.IRModule({"main": relax.Function(plain.params, body, attrs=plain.attrs)})
