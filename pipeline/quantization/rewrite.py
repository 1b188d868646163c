"""int8 post-training quantization: the Relax rewrite that applies a plan.

TVM 0.27 has int8 x int8 -> int32 convolutions and matmuls but no calibrating quantizer, and
quantized ONNX/PT2E graphs import as float convolutions between quantize/dequantize. So the
rewrite is ours, on the imported Relax module (NCHW, batch-norm folded, weights constant):

  conv2d(x, W)  ->  astype(conv2d(q(x), Wq, out_dtype=int32), f32) * (s_x * s_w)

- Weights: per output channel, symmetric, stored as int8 constants (Wq ~ W / s_w), rounded
  against the calibration data so that the layer's output error is least, not each weight's
  (pipeline.quantization.rounding); the choice is recorded with the ranges.
- Activations: one scale per tensor (per channel for depthwise inputs), stored as the target's
  policy says (pipeline.quantization.policy): uint8 for ReLU outputs, int8 otherwise, or
  with a zero point of +-128 at pointwise inputs where the instruction wants the other type.
- The float epilogue (scale, bias, ReLU6, residual add) and the next layer's q(x) fuse into the
  int8 kernel (FuseOps), so requantization costs no extra pass over memory.

Calibration (choosing each tensor's range) is pipeline.quantization.calibration; the plan it
returns is pipeline.quantization.plan."""

from __future__ import annotations

import zlib

import numpy as np

import pipeline.quantization.rounding as rounding
from pipeline.base.errors import UserError
from pipeline.quantization.graph import channel_axis, is_pointwise, op_name, quantizable_layers
from pipeline.quantization.plan import Int8Plan, Layer, TensorRange
from pipeline.quantization.policy import Int8Policy
from pipeline.quantization.weights import quantize_weight


def apply_int8(mod, plan: Int8Plan, policy: Int8Policy,
               keep_float: frozenset[str] = frozenset()):
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
                                      offsets, policy)
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
               offsets: np.ndarray | None, policy: Int8Policy):
    """int8 (or uint8) x int8 -> int32 version of `call`, rescaled to float32."""
    from tvm import relax

    data, weight = call.args
    w = weight.value.numpy()
    is_conv = op_name(call) == "relax.nn.conv2d"
    w_scale, w_int8 = quantize_weight(w, channel_axis(call), offsets)
    levels = 255 if layer.unsigned else 127
    x_scale, inverse = _activation_scale(tensor_range, levels, data.ty.ndim)
    pointwise = is_pointwise(call)
    offset = policy.zero_point(layer.unsigned, pointwise)
    low = 0 if layer.unsigned else -levels
    q = _quantize(data, inverse, low, levels, policy.stored_dtype(layer.unsigned, pointwise),
                  offset)
    acc = builder.emit(_same_op(call, q, relax.const(w_int8), "int32"))
    scale = (w_scale.reshape(-1) * x_scale).reshape((1, -1, 1, 1) if is_conv else (1, -1))
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


def _activation_scale(tensor_range: TensorRange, levels: int, ndim: int):
    """The input's scale (per channel, or one), and its inverse as a Relax constant."""
    from tvm import relax

    if tensor_range.channel_thresholds is not None:
        x_scale = np.array(tensor_range.channel_thresholds, "float32") / levels
        return x_scale, relax.const((1.0 / x_scale).reshape(1, -1, 1, 1).astype("float32"))
    x_scale = (tensor_range.threshold if tensor_range.threshold > 0 else 1.0) / levels
    # Not a 0-d constant: those are inlined into the TIR kernels, which would make every
    # kernel's tuning record depend on the calibration. As a tensor it stays an argument.
    return x_scale, relax.const(np.full([1] * ndim, 1.0 / x_scale, "float32"))


def simulate_int8(mod, plan: Int8Plan):
    """`mod` with a second input, `switches` (float32, one per planned layer, 0 or 1): where a
    switch is 1 its layer computes what its int8 form computes (input rounded and clipped to
    its 8-bit grid, int8 weights, the same bias correction) in float; where 0, in float as
    imported. One compiled module then answers what any choice of int8 layers does to the
    outputs, which is what per-layer sensitivity asks for every layer."""
    import tvm
    from tvm import relax

    func = mod["main"]
    layers, calls, _ = quantizable_layers(func)
    switches = relax.Var("switches", relax.TensorType((len(layers),), "float32"))
    chosen = [(call, layer, _offsets(plan, i, call), i)
              for i, (call, layer) in enumerate(zip(calls, layers, strict=True))]

    @relax.expr_functor.mutator
    class Simulator(relax.PyExprMutator):
        def visit_call_(self, call):
            new = super().visit_call_(call)
            for original, layer, offsets, index in chosen:
                if original.same_as(call):
                    switch = self.builder_.emit(
                        relax.op.take(switches, relax.const(index, "int64"), axis=0, mode="clip"))
                    return _simulated_call(new, layer, plan.ranges[layer.tensor], offsets,
                                           switch)
            return new

    visited = Simulator(mod).visit_expr(func)
    simulated = relax.Function([*visited.params, switches], visited.body,
                               visited.ret_ty, attrs=visited.attrs)
    return tvm.IRModule({"main": simulated})


def _simulated_call(call, layer: Layer, tensor_range: TensorRange, offsets: np.ndarray | None,
                    switch):
    from tvm import relax

    data, weight = call.args
    w = weight.value.numpy()
    w_scale, w_int8 = quantize_weight(w, channel_axis(call), offsets)
    levels = 255 if layer.unsigned else 127
    x_scale, inverse = _activation_scale(tensor_range, levels, data.ty.ndim)
    grid = _quantize(data, inverse, 0 if layer.unsigned else -levels, levels, "float32")
    x_scale = np.asarray(x_scale, "float32")
    rounded = relax.op.multiply(grid, relax.const(
        x_scale.reshape(1, -1, 1, 1) if x_scale.ndim else np.full([1] * data.ty.ndim, x_scale)))
    data = relax.op.add(data, relax.op.multiply(switch, relax.op.subtract(rounded, data)))
    error = w - w_int8.astype("float32") * w_scale
    weight = relax.op.subtract(weight, relax.op.multiply(switch, relax.const(error)))
    out = _same_op(call, data, weight, "float32")
    shape = (1, -1, 1, 1) if op_name(call) == "relax.nn.conv2d" else (1, -1)
    if not tensor_range.channel_mean:
        return out
    shift = _rounding_shift(error, np.array(tensor_range.channel_mean), call).reshape(shape)
    return relax.op.add(out, relax.op.multiply(switch, relax.const(shift.astype("float32"))))


def _same_op(call, data, weight, out_dtype: str):
    """`call`'s convolution or matmul, with its attributes, on other operands."""
    from tvm import relax

    if op_name(call) != "relax.nn.conv2d":
        return relax.op.matmul(data, weight, out_dtype=out_dtype)
    attrs = call.attrs
    return relax.op.nn.conv2d(data, weight, strides=attrs.strides, padding=attrs.padding,
                              dilation=attrs.dilation, groups=attrs.groups,
                              data_layout=str(attrs.data_layout),
                              kernel_layout=str(attrs.kernel_layout),
                              out_layout=str(attrs.out_layout), out_dtype=out_dtype)


def _rounding_shift(error: np.ndarray, mean: np.ndarray, call) -> np.ndarray:
    """E[op(x, error)] per output channel, for x of per-channel mean `mean`."""
    if op_name(call) != "relax.nn.conv2d":
        return mean @ error  # (K,) @ (K, N)
    out_channels, per_group = error.shape[:2]
    groups = int(call.attrs.groups)
    group_of = np.arange(out_channels) // (out_channels // groups)
    channels = group_of[:, None] * per_group + np.arange(per_group)[None, :]  # (O, I/g)
    return np.sum(error.sum(axis=(2, 3)) * mean[channels], axis=1)


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
