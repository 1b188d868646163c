"""int8 post-training quantization: the plan and the Relax rewrite that applies it.

TVM 0.27 has int8 x int8 -> int32 convolutions and matmuls but no calibrating quantizer, and
quantized ONNX/PT2E graphs import as float convolutions between quantize/dequantize. So the
rewrite is ours, on the imported Relax module (NCHW, batch-norm folded, weights constant):

  conv2d(x, W)  ->  astype(conv2d(q(x), Wq, out_dtype=int32), f32) * (s_x * s_w)

- Weights: per output channel, symmetric, stored as int8 constants (Wq ~ W / s_w), rounded
  against the calibration data so that the layer's output error is least, not each weight's
  (pipeline.rounding); the choice is recorded with the ranges.
- Activations: one scale per tensor, zero point 0. A tensor that is non-negative by
  construction (the output of ReLU/ReLU6) is quantized to uint8 (0..255), any other to int8
  (-127..127): a zero point of 0 keeps the convolutions' zero padding exact, and uint8 x int8 is
  the operand order of x86's VNNI instructions. Signed inputs of 1x1 convolutions and matmuls
  (nothing to pad) are uint8 with zero point 128 instead, so that those run on VNNI too
  (pipeline.vnni); the offset (128 x the weight sums) joins the float shift.
- The float epilogue (scale, bias, ReLU6, residual add) and the next layer's q(x) fuse into the
  int8 kernel (FuseOps), so requantization costs no extra pass over memory.

Calibration (choosing each tensor's range) is pipeline.calibration; this module holds the plan
it returns, the rewrite that applies it, and the accuracy fallback's ranking.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

from pipeline import rounding
from pipeline.errors import UserError
from pipeline.rounding import Geometry

Method = Literal["minmax", "percentile", "entropy", "mse"]
METHODS: tuple[str, ...] = get_args(Method)
QUANTIZED_OPS = ("relax.nn.conv2d", "relax.matmul")


@dataclass(frozen=True)
class Layer:
    name: str  # conv2d_0, conv2d_1, ..., matmul_0: the order the model computes them in
    tensor: int  # index of the input tensor it reads, among the calibrated tensors
    unsigned: bool  # that tensor is >= 0 by construction (ReLU output): quantized as uint8
    depthwise: bool = False  # a depthwise convolution: each output channel reads one input



@dataclass(frozen=True)
class TensorRange:
    absmax: float  # the largest |value| seen
    threshold: float  # the clipping threshold the method chose (<= absmax)
    noise: float  # power of the quantization error relative to the signal's, on the samples
    # Per channel (NCHW axis 1), for tensors only depthwise convolutions read: there each
    # channel meets its own weights alone, so a scale per channel costs nothing and spares the
    # channels of small range from a scale set by the largest.
    channel_thresholds: tuple[float, ...] | None = None
    # Mean of each channel (NCHW axis 1; the last axis of matmul inputs): the expected input
    # that bias correction multiplies with the weights' rounding error.
    channel_mean: tuple[float, ...] = ()


@dataclass(frozen=True)
class Int8Plan:
    layers: tuple[Layer, ...]
    ranges: tuple[TensorRange, ...]  # one per calibrated tensor
    method: Method
    # Per layer: its weights' offsets from nearest rounding (pipeline.rounding's text), chosen
    # against the calibration data; "" (or no entry) for nearest rounding.
    rounding: tuple[str, ...] = ()


def quantizable_layers(func) -> tuple[list[Layer], list, list]:
    """The conv2d/matmul calls with constant weights, in order: their descriptions, the calls
    themselves, and the tensors they read (distinct, in order of first use)."""
    from tvm import relax
    from tvm.ir.expr import Constant

    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    layers: list[Layer] = []
    calls: list = []
    tensors: list = []
    counts: dict[str, int] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            call = binding.value
            if not (isinstance(call, relax.Call) and _op_name(call) in QUANTIZED_OPS
                    and isinstance(call.args[1], Constant)
                    and call.args[0].ty.dtype == "float32"):
                continue
            data = call.args[0]
            index = next((i for i, t in enumerate(tensors) if t.same_as(data)), None)
            if index is None:
                index = len(tensors)
                tensors.append(data)
            kind = _op_name(call).rsplit(".", 1)[1]
            name = f"{kind}_{counts.get(kind, 0)}"
            counts[kind] = counts.get(kind, 0) + 1
            layers.append(Layer(name, index, _non_negative(data, bindings), _is_depthwise(call)))
            calls.append(call)
    return layers, calls, tensors


def _is_depthwise(call) -> bool:
    if _op_name(call) != "relax.nn.conv2d" or str(call.attrs.data_layout) != "NCHW":
        return False
    channels = int(call.args[0].ty.shape[1])
    return int(call.attrs.groups) == channels > 1 and int(call.args[1].ty.shape[1]) == 1


def _op_name(call) -> str:
    import tvm

    return call.op.name if isinstance(call.op, tvm.ir.Op) else ""


def _non_negative(expr, bindings) -> bool:
    """True when `expr` is a ReLU/ReLU6 output: maximum(_, c >= 0), relu, or a minimum of one."""
    from tvm import relax
    from tvm.ir.expr import Constant

    value = bindings.get(expr)
    if not isinstance(value, relax.Call):
        return False
    name = _op_name(value)
    if name == "relax.nn.relu":
        return True
    if name == "relax.maximum":
        return any(isinstance(a, Constant) and float(a.value.numpy().min()) >= 0
                   for a in value.args)
    if name == "relax.minimum":
        return any(_non_negative(a, bindings) for a in value.args)
    if name in ("relax.mean", "relax.reshape", "relax.permute_dims", "relax.nn.max_pool2d",
                "relax.nn.avg_pool2d", "relax.nn.adaptive_avg_pool2d"):
        return _non_negative(value.args[0], bindings)
    return False


def weight_noise(weight: np.ndarray, per_channel_axis: int) -> float:
    scale, quantized = _quantize_weight(weight, per_channel_axis)
    error = weight - quantized.astype("float32") * scale
    return float(np.sum(error.astype("float64") ** 2) / max(np.sum(weight ** 2), 1e-30))


def _quantize_weight(weight: np.ndarray, axis: int, offsets: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric int8: (scale broadcastable to `weight`, int8 values): nearest
    rounding plus `offsets` (the calibration's compensated rounding, pipeline.rounding).

    Without offsets, depthwise filters (OIHW with one input channel) are rounded so that each
    one's integers sum to its rounded sum: such a filter sees one channel of mostly positive
    ReLU outputs, so its response to that channel's local mean must survive rounding. On
    EfficientNet-Lite0 this lifts the logits' SQNR with only depthwise weights quantized from
    25 to 31 dB (measured in a fake-quantized PyTorch copy)."""
    scale = _weight_scale(weight, axis)
    rounded = _nearest(weight, scale)
    if offsets is not None:
        rounded = rounded + offsets
    elif weight.ndim == 4 and axis == 0 and weight.shape[1] == 1:
        exact = (weight / scale).reshape(len(weight), -1)
        rounded = _round_preserving_sums(exact, rounded.reshape(len(weight), -1)
                                         ).reshape(weight.shape)
    return scale, np.clip(rounded, -127, 127).astype("int8")


def _nearest(weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Nearest rounding in int8's range: what recorded rounding offsets are counted from."""
    return np.clip(np.round(weight / scale), -127, 127)


def _weight_scale(weight: np.ndarray, axis: int) -> np.ndarray:
    reduce_axes = tuple(a for a in range(weight.ndim) if a != axis)
    scale = np.abs(weight).max(axis=reduce_axes, keepdims=True) / 127.0
    return np.where(scale > 0, scale, 1.0).astype("float32")


def weight_geometry(call) -> Geometry | None:
    """How `call` reads its input, for compensated rounding; None where it is not supported
    (grouped but not depthwise convolutions, layouts other than NCHW/OIHW)."""
    if _op_name(call) == "relax.matmul":
        return Geometry("matmul")
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout)) != ("NCHW", "OIHW"):
        return None
    if _is_pointwise(call) and all(int(s) == 1 for s in attrs.strides):
        return Geometry("pointwise")
    if int(attrs.groups) != 1 and not _is_depthwise(call):
        return None
    return Geometry("depthwise" if _is_depthwise(call) else "conv",
                    tuple(int(d) for d in list(call.args[1].ty.shape)[2:]),
                    tuple(int(s) for s in attrs.strides),
                    tuple(int(p) for p in attrs.padding),
                    tuple(int(d) for d in attrs.dilation))


def compensated_rounding(call, geometry: Geometry, moment: np.ndarray) -> str:
    """The offsets from nearest rounding that pipeline.rounding.gptq chooses for `call`'s
    weights against `moment` (the second moment of its input patches, read as `geometry`
    says), as record text."""
    weight = call.args[1].value.numpy()
    scale = _weight_scale(weight, _channel_axis(call))
    chosen = rounding.round_weight(weight, scale, moment, geometry)
    return rounding.encode(chosen.astype("int16") - _nearest(weight, scale).astype("int16"))


def _round_preserving_sums(exact: np.ndarray, rounded: np.ndarray) -> np.ndarray:
    """`rounded` with, in each row, the entries whose rounding lost most moved one step, until
    the row sums to round(sum of `exact`): each entry stays within one step of its value."""
    residual = exact - rounded
    deficit = (np.round(exact.sum(axis=1)) - rounded.sum(axis=1))[:, None]
    rank = np.argsort(np.argsort(-residual, axis=1, kind="stable"), axis=1)  # 0: largest
    up = rank < deficit  # the largest positive residuals round up instead
    down = (residual.shape[1] - 1 - rank) < -deficit  # the most negative ones round down
    return rounded + up - down


# --- rewrite -----------------------------------------------------------------------------------

def apply_int8(mod, plan: Int8Plan, keep_float: frozenset[str] = frozenset()):
    """`mod` with every planned layer not in `keep_float` computing in int8 (see module doc)."""
    import tvm
    from tvm import relax

    func = mod["main"]
    layers, calls, _ = quantizable_layers(func)
    unknown = keep_float - {layer.name for layer in layers}
    if unknown:
        raise UserError(f"--keep-float names {sorted(unknown)}, which the model does not have; "
                        f"its layers are {layers[0].name} to {layers[-1].name}.")
    chosen = [(call, layer, _offsets(plan, i, call)) for i, (call, layer)
              in enumerate(zip(calls, layers, strict=True)) if layer.name not in keep_float]

    @relax.expr_functor.mutator
    class Int8Rewriter(relax.PyExprMutator):
        def visit_call_(self, call):
            new = super().visit_call_(call)
            for original, layer, offsets in chosen:
                if original.same_as(call):
                    return _int8_call(self.builder_, new, layer, plan.ranges[layer.tensor],
                                      offsets)
            return new

    rewritten = tvm.IRModule({"main": Int8Rewriter(mod).visit_expr(func)})
    return relax.transform.DeadCodeElimination()(_merge_constant_adds(rewritten))


def _offsets(plan: Int8Plan, index: int, call) -> np.ndarray | None:
    text = plan.rounding[index] if index < len(plan.rounding) else ""
    if not text:
        return None
    shape = tuple(int(d) for d in call.args[1].ty.shape)
    try:
        return rounding.decode(text, shape)
    except (ValueError, zlib.error) as err:
        raise UserError(f"The calibration record's rounding of {plan.layers[index].name} does "
                        f"not fit its weights ({err}): the record belongs to another model or "
                        "is damaged. Quantize again.") from None


def _merge_constant_adds(mod):
    """add(add(x, c1), c2) -> add(x, c1 + c2) for constants c1, c2: the convolution's own bias
    joins the shift of its int8 rescaling instead of being a second vector in the library."""
    import tvm
    from tvm import relax
    from tvm.ir.expr import Constant

    add = tvm.ir.Op.get("relax.add")

    @relax.expr_functor.mutator
    class Merger(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if not (call.op.same_as(add) and isinstance(call.args[1], Constant)
                    and isinstance(call.args[0], relax.Var)):
                return call
            inner = self.lookup_binding(call.args[0])
            if not (isinstance(inner, relax.Call) and inner.op.same_as(add)
                    and isinstance(inner.args[1], Constant)):
                return call
            first, second = inner.args[1].value.numpy(), call.args[1].value.numpy()
            if first.dtype != second.dtype or np.broadcast_shapes(first.shape, second.shape) \
                    != first.shape:
                return call
            return relax.op.add(inner.args[0], relax.const(first + second))

    return tvm.IRModule({"main": Merger(mod).visit_expr(mod["main"])})


def _int8_call(builder, call, layer: Layer, tensor_range: TensorRange,
               offsets: np.ndarray | None):
    """int8 (or uint8) x int8 -> int32 version of `call`, rescaled to float32."""
    from tvm import relax

    data, weight = call.args
    w = weight.value.numpy()
    is_conv = _op_name(call) == "relax.nn.conv2d"
    w_scale, w_int8 = _quantize_weight(w, _channel_axis(call), offsets)
    levels, dtype = (255, "uint8") if layer.unsigned else (127, "int8")
    if tensor_range.channel_thresholds is not None:
        x_scale = np.array(tensor_range.channel_thresholds, "float32") / levels
        inverse = relax.const((1.0 / x_scale).reshape(1, -1, 1, 1).astype("float32"))
    else:
        x_scale = (tensor_range.threshold if tensor_range.threshold > 0 else 1.0) / levels
        # Not a 0-d constant: those are inlined into the TIR kernels, which would make every
        # kernel's tuning record depend on the calibration. As a tensor it stays an argument.
        inverse = relax.const(np.full([1] * data.ty.ndim, 1.0 / x_scale, "float32"))
    # A signed input of a 1x1 convolution or a matmul is stored as uint8 with zero point 128:
    # x86's VNNI multiplies uint8 by int8 only. With no padding to keep at zero, the offset
    # comes back out as 128 x each output channel's weight sum, in the float shift below.
    offset = 128 if not layer.unsigned and _is_pointwise(call) else 0
    low = 0 if layer.unsigned else -levels
    q = _quantize(data, inverse, low, levels, "uint8" if offset else dtype, offset)
    if is_conv:
        attrs = call.attrs
        acc = relax.op.nn.conv2d(q, relax.const(w_int8), strides=attrs.strides,
                                 padding=attrs.padding, dilation=attrs.dilation,
                                 groups=attrs.groups, data_layout=str(attrs.data_layout),
                                 kernel_layout=str(attrs.kernel_layout),
                                 out_layout=str(attrs.out_layout), out_dtype="int32")
        scale = (w_scale.reshape(-1) * x_scale).reshape(1, -1, 1, 1)
    else:
        acc = relax.op.matmul(q, relax.const(w_int8), out_dtype="int32")
        scale = (w_scale.reshape(-1) * x_scale).reshape(1, -1)
    acc = builder.emit(acc)
    # One scale and one shift per output channel, whatever the corrections: the constants
    # are a tenth of the library once the weights are int8.
    shift = np.zeros(scale.shape, "float64")
    if offset:
        in_axes = (1, 2, 3) if is_conv else (0,)
        weight_sums = w_int8.astype("int64").sum(axis=in_axes).reshape(scale.shape)
        shift -= offset * weight_sums * scale.astype("float64")
    if tensor_range.channel_mean:
        # Bias correction: rounding the weights shifts each output channel's mean by the
        # rounding error times the mean input; add that shift back (padding borders ignored).
        shift += _rounding_shift(w - w_int8.astype("float32") * w_scale,
                                 np.array(tensor_range.channel_mean), call).reshape(scale.shape)
    rescaled = relax.op.multiply(relax.op.astype(acc, "float32"),
                                 relax.const(scale.astype("float32")))
    return relax.op.add(rescaled, relax.const(shift.astype("float32")))


def _rounding_shift(error: np.ndarray, mean: np.ndarray, call) -> np.ndarray:
    """E[op(x, error)] per output channel, for x of per-channel mean `mean`."""
    if _op_name(call) != "relax.nn.conv2d":
        return mean @ error  # (K,) @ (K, N)
    out_channels, per_group = error.shape[:2]
    groups = int(call.attrs.groups)
    group_of = np.arange(out_channels) // (out_channels // groups)
    channels = group_of[:, None] * per_group + np.arange(per_group)[None, :]  # (O, I/g)
    return np.sum(error.sum(axis=(2, 3)) * mean[channels], axis=1)


def _is_pointwise(call) -> bool:
    """A matmul, or a 1x1 convolution without padding or groups."""
    if _op_name(call) != "relax.nn.conv2d":
        return True
    attrs = call.attrs
    return ([int(d) for d in call.args[1].ty.shape][2:] == [1, 1] and int(attrs.groups) == 1
            and all(int(p) == 0 for p in attrs.padding))


def _channel_axis(call) -> int:
    """Output channels of the weight: axis 0 of OIHW conv weights, the last of (K, N) matmul's."""
    return 0 if _op_name(call) == "relax.nn.conv2d" else call.args[1].ty.ndim - 1


def _quantize(data, inverse_scale, low: int, high: int, dtype: str, offset: int = 0):
    """round(x / scale) clamped to [low, high], plus `offset`, as elementwise ops that FuseOps
    fuses into the producer and ConvertLayout passes through (relax.quantize and clip would
    need transposes)."""
    from tvm import relax

    scaled = relax.op.round(relax.op.multiply(data, inverse_scale))
    clamped = relax.op.minimum(relax.op.maximum(scaled, relax.const(float(low), "float32")),
                               relax.const(float(high), "float32"))
    if offset:
        clamped = relax.op.add(clamped, relax.const(float(offset), "float32"))
    return relax.op.astype(clamped, dtype)


def rank_by_noise(mod, plan: Int8Plan) -> list[str]:
    """Layer names in the order the accuracy fallback keeps them in float: first the layers
    that read the model's input (their rounding of the raw input reaches every later layer; on
    EfficientNet-Lite0 keeping conv2d_0 alone in float lifts the logits' SQNR from 16 to 20 dB),
    then the noisiest: relative error power of the input's quantization plus the weights'."""
    layers, calls, tensors = quantizable_layers(mod["main"])
    params = list(mod["main"].params)
    score = {layer.name: plan.ranges[layer.tensor].noise
             + weight_noise(call.args[1].value.numpy(), _channel_axis(call))
             for layer, call in zip(layers, calls, strict=True)}
    reads_input = {layer.name for layer in layers
                   if any(tensors[layer.tensor].same_as(p) for p in params)}
    return sorted(score, key=lambda name: (name not in reads_input, -score[name]))


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
