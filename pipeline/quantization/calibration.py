"""int8 calibration: run the float model on sample data and choose each quantized tensor's
clipping threshold (pipeline.quantization.plan holds the plan it returns, .rewrite applies it).

Activation ranges come from running the float model on the calibration data (compiled for this
machine) and handing the absolute values that reach each quantized layer to an observer
(pipeline.quantization.observers); the weights' rounding is fitted to the same inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

import pipeline.quantization.rounding as rounding
from pipeline.base.errors import UserError
from pipeline.compile.host import compile_for_host
from pipeline.quantization.graph import quantizable_layers, weight_geometry
from pipeline.quantization.observers import Observer, relative_noise
from pipeline.quantization.plan import Int8Plan, TensorRange
from pipeline.quantization.weights import compensated_rounding

log = logging.getLogger(__name__)

SAMPLES_PER_INPUT = 32768  # absolute values kept per tensor and calibration input


def calibrate(mod, inputs: np.ndarray, observer: Observer) -> Int8Plan:
    """Run the float model on `inputs` (N, ...) and choose a clipping threshold per tensor,
    and the rounding of each layer's weights against the inputs that reach it."""
    layers, calls, tensors = quantizable_layers(mod["main"])
    if not layers:
        raise UserError("The model has no convolution or matmul with constant weights: nothing "
                        "to quantize to int8.")
    run = compile_for_host(_expose(mod, tensors))
    depthwise_only = [all(layer.depthwise for layer in layers if layer.tensor == t)
                      for t in range(len(tensors))]
    geometries = [_compensable(call) for call in calls]

    def statistics(i: int, outputs: list) -> _InputStatistics:
        """What one input contributes, computed on the thread that ran it."""
        _, *values = outputs
        rng = np.random.default_rng((0, i))  # the same samples whichever thread runs input i
        absmax, samples = [], []
        for value in values:
            flat = np.abs(value[0]).astype("float32").reshape(-1)
            absmax.append(float(flat.max()))
            samples.append(flat[rng.integers(0, flat.size, SAMPLES_PER_INPUT)]
                           if flat.size > SAMPLES_PER_INPUT else flat)
        return _InputStatistics(
            absmax, samples, [_channel_means(value) for value in values],
            [None if geometry is None else rounding.patch_moment(values[layer.tensor], geometry)
             for layer, geometry in zip(layers, geometries, strict=True)])

    absmax = np.zeros(len(tensors))
    samples: list[list[np.ndarray]] = [[] for _ in tensors]
    sums: list[np.ndarray | float] = [0.0] * len(tensors)
    moments: list[np.ndarray | float] = [0.0] * len(layers)
    for i, found in enumerate(run.map((x[None] for x in inputs), then=statistics)):
        for t in range(len(tensors)):
            absmax[t] = max(absmax[t], found.absmax[t])
            samples[t].append(found.samples[t])
            sums[t] = sums[t] + found.channel_means[t]
        for k, moment in enumerate(found.moments):
            if moment is not None:
                moments[k] = moments[k] + moment
        if (i + 1) % 16 == 0 or i + 1 == len(inputs):
            log.info(f"  calibration: {i + 1}/{len(inputs)} inputs through {len(layers)} layers")
    unsigned = {layer.tensor: layer.unsigned for layer in layers}
    ranges = []
    for t in range(len(tensors)):
        levels = 255 if unsigned[t] else 127
        means = tuple(float(m) for m in np.asarray(sums[t]) / len(inputs))
        if depthwise_only[t]:
            ranges.append(_unclipped(np.concatenate(samples[t]), float(absmax[t]), levels,
                                     len(means), means))
            continue
        ranges.append(replace(observer.tensor_range(np.concatenate(samples[t]),
                                                    float(absmax[t]), levels),
                              channel_mean=means))
    log.info(f"  rounding the weights of {sum(g is not None for g in geometries)} of {len(layers)} "
          "layers against the calibration data (GPTQ)")
    rounded = tuple("" if geometry is None else compensated_rounding(call, geometry, moment)
                    for call, geometry, moment in zip(calls, geometries, moments, strict=True))
    return Int8Plan(tuple(layers), tuple(ranges), observer.method, rounded)


@dataclass(frozen=True)
class _InputStatistics:
    absmax: list[float]  # per calibrated tensor
    samples: list[np.ndarray]  # absolute values, at most SAMPLES_PER_INPUT per tensor
    channel_means: list[np.ndarray]
    moments: list[np.ndarray | None]  # per layer whose weights' rounding is fitted


def _unclipped(values: np.ndarray, absmax: float, levels: int, channels: int,
               means: tuple[float, ...]) -> TensorRange:
    """The range of a tensor only depthwise convolutions read: its largest value, whatever the
    method, given to every channel. On EfficientNet-Lite0 clipping these at 70% of the maximum
    cost 25 dB of the logits' SQNR, and ranges fitted per channel to the calibration photos
    (even their maxima) lost 6 dB on photos calibration never saw, where channels that were
    quiet on the calibration photos are not (the README's quantization section). The kernels
    keep a scale per channel (their tuning records read one)."""
    threshold = absmax if absmax > 0 else 1.0
    return TensorRange(absmax, threshold, relative_noise(values, threshold, levels),
                       (threshold,) * channels, means)


def _compensable(call) -> rounding.Geometry | None:
    geometry = weight_geometry(call)
    fits = geometry is not None and rounding.columns(
        geometry, tuple(int(d) for d in call.args[1].ty.shape)) <= rounding.MAX_COLUMNS
    return geometry if fits else None


def _channel_means(value: np.ndarray) -> np.ndarray:
    axis = 1 if value.ndim == 4 else value.ndim - 1
    return value.astype("float64").mean(axis=tuple(a for a in range(value.ndim) if a != axis))


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
