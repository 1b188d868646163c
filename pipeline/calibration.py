"""int8 calibration: run the float model on sample data and choose each quantized tensor's
clipping threshold (pipeline.int8 holds the plan it returns and the rewrite that applies it).

Activation ranges come from running the float model on the calibration data (compiled for this
machine) and reading the absolute values that reach each quantized layer: `minmax` (largest
seen), `percentile` (e.g. the 99.99th), or `entropy` (the clipping threshold whose 8-bit
histogram has the least KL divergence from the float one, as in TensorRT's calibrator).
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from pipeline.errors import UserError
from pipeline.int8 import Int8Plan, Method, TensorRange, quantizable_layers
from pipeline.lowering import compile_for_host

SAMPLES_PER_INPUT = 32768  # absolute values kept per tensor and calibration input
HISTOGRAM_BINS = 2048


def calibrate(mod, inputs: np.ndarray, method: Method, percentile: float = 99.99,
              out=None) -> Int8Plan:
    """Run the float model on `inputs` (N, ...) and choose a clipping threshold per tensor."""
    out = out or sys.stderr
    layers, _, tensors = quantizable_layers(mod["main"])
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
    for i, x in enumerate(inputs):
        _, *values = run(x[None])
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
    return Int8Plan(tuple(layers), tuple(ranges), method)


def _channel_means(value: np.ndarray) -> np.ndarray:
    axis = 1 if value.ndim == 4 else value.ndim - 1
    return value.astype("float64").mean(axis=tuple(a for a in range(value.ndim) if a != axis))


def _channel_range(columns: np.ndarray, method: Method, percentile: float, levels: int
                   ) -> TensorRange:
    """Thresholds per channel: the largest value (minmax) or the percentile (the entropy
    method's histogram search per channel would cost minutes; the percentile stands in)."""
    maxima = columns.max(axis=1)
    if method == "minmax":
        thresholds = maxima
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
    return _kl_threshold(values, absmax, levels)


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
