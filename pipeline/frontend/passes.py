"""Relax rewrites of our own: the ones TVM 0.27 does not ship."""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard


@relax.transform.function_pass(opt_level=0)
class FoldPadIntoConv2D:
    """Turn `conv2d(pad(x))` with zero padding of H and W only into one conv2d with that padding.

    TensorFlow-trained nets pad asymmetrically before stride-2 convolutions; exported as a
    separate pad, that costs a full copy of the activation and a tuning task of its own, while
    Relax's conv2d takes (top, left, bottom, right) padding directly.
    """

    def transform_function(self, func, mod, ctx):
        data, weight = wildcard(), wildcard()
        pad = is_op("relax.nn.pad")(data)
        pattern = is_op("relax.nn.conv2d")(pad, weight)

        def rewrite(expr, matches):
            pad_call, conv_call = matches[pad], matches[pattern]
            widths = [int(w) for w in pad_call.attrs.pad_width]
            layout = str(conv_call.attrs.data_layout)
            if str(pad_call.attrs.pad_mode) != "constant" or len(widths) != 8:
                return expr
            if not _is_zero(pad_call):
                return expr
            per_axis = dict(zip(layout, zip(widths[0::2], widths[1::2], strict=True), strict=True))
            if any(per_axis[a] != (0, 0) for a in layout if a not in "HW"):
                return expr
            old = [int(p) for p in conv_call.attrs.padding]
            (top, bottom), (left, right) = per_axis["H"], per_axis["W"]
            padding = (old[0] + top, old[1] + left, old[2] + bottom, old[3] + right)
            attrs = conv_call.attrs
            return relax.op.nn.conv2d(
                matches[data], matches[weight], strides=attrs.strides, padding=padding,
                dilation=attrs.dilation, groups=attrs.groups, data_layout=layout,
                kernel_layout=str(attrs.kernel_layout), out_layout=str(attrs.out_layout),
                out_dtype=attrs.out_dtype)

        return rewrite_call(pattern, rewrite, func)


def _is_zero(pad_call: relax.Call) -> bool:
    return float(pad_call.attrs.pad_value) == 0.0


@relax.transform.function_pass(opt_level=0)
class ClipToMinMax:
    """Rewrite `clip(x, lo, hi)` as `minimum(maximum(x, lo), hi)`.

    ConvertLayout does not know clip (ReLU6) and wraps every one in a pair of transposes when
    converting to NHWC; elementwise min/max with scalars convert for free and fuse the same.
    """

    def transform_function(self, func, mod, ctx):
        data = wildcard()
        pattern = is_op("relax.clip")(data, wildcard(), wildcard())

        def rewrite(expr, matches):
            call = matches[pattern]
            dtype = call.ty.dtype
            low, high = (float(arg.value) for arg in call.args[1:])
            low_const = relax.const(low, dtype)
            high_const = relax.const(high, dtype)
            return relax.op.minimum(relax.op.maximum(matches[data], low_const), high_const)

        return rewrite_call(pattern, rewrite, func)


@relax.transform.function_pass(opt_level=0)
class DropIdentityBroadcasts:
    """Remove `broadcast_to(x, shape)` where x already has that shape.

    ONNX's variadic ops broadcast every input to the common shape first; when they all have it,
    the copy does nothing, but ConvertLayout keeps broadcast_to in NCHW with transposes around
    it (five around the residual sums of an old ResNet file).
    """

    def transform_function(self, func, mod, ctx):
        pattern = is_op("relax.broadcast_to")(wildcard(), wildcard())

        def rewrite(expr, matches):
            call = matches[pattern]
            source, target = call.args[0].ty, call.ty
            if not (hasattr(source, "shape") and hasattr(target, "shape")
                    and source.shape is not None and target.shape is not None):
                return expr
            if [str(d) for d in source.shape] != [str(d) for d in target.shape]:
                return expr
            return call.args[0]

        return rewrite_call(pattern, rewrite, func)


_PAIRWISE = {"relax.max": relax.op.maximum, "relax.min": relax.op.minimum,
             "relax.sum": relax.op.add, "relax.mean": relax.op.add}


@relax.transform.function_pass(opt_level=0)
class UnstackReductions:
    """Rewrite `max(stack((a, b, ...)), axis=0)` (and min, sum, mean) as pairwise ops.

    ONNX's variadic Max/Min/Sum/Mean import as a stack into a 5-D tensor reduced over the new
    axis, which the NHWC layout conversion cannot follow; `maximum(a, b)` it converts for free.
    """

    def transform_function(self, func, mod, ctx):
        stack = is_op("relax.stack")(wildcard())
        pattern = (is_op("relax.max")(stack) | is_op("relax.min")(stack)
                   | is_op("relax.sum")(stack) | is_op("relax.mean")(stack))

        def rewrite(expr, matches):
            reduce_call, stack_call = matches[pattern], matches[stack]
            parts = stack_call.args[0]
            axes = [int(a) for a in reduce_call.attrs.axis or []]
            if (not isinstance(parts, relax.Tuple) or int(stack_call.attrs.axis) != 0
                    or axes != [0] or reduce_call.attrs.keepdims):
                return expr
            pairwise = _PAIRWISE[reduce_call.op.name]
            result = parts.fields[0]
            for part in parts.fields[1:]:
                result = pairwise(result, part)
            if reduce_call.op.name == "relax.mean":
                result = relax.op.multiply(
                    result, relax.const(1 / len(parts.fields), reduce_call.ty.dtype))
            return result

        return rewrite_call(pattern, rewrite, func)


# Operations whose float results numpy rounds exactly as TVM's compiled kernels do (IEEE add,
# subtract, multiply, divide and square root are correctly rounded; the rest only move data).
_NUMPY_ELEMENTWISE = {"relax.add": np.add, "relax.subtract": np.subtract,
                      "relax.multiply": np.multiply, "relax.divide": np.divide,
                      "relax.sqrt": np.sqrt}
_NUMPY_RESHAPES = {"relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"}


@relax.expr_functor.mutator
class _NumpyConstantFolder(relax.PyExprMutator):
    def visit_call_(self, call):
        call = self.visit_expr_post_order(call)
        name = call.op.name if isinstance(call.op, tvm.ir.Op) else None
        if name not in _NUMPY_ELEMENTWISE and name not in _NUMPY_RESHAPES | {"relax.permute_dims"}:
            return call
        out = call.ty
        if not (hasattr(out, "shape") and out.shape is not None
                and all(isinstance(d, tvm.tirx.IntImm) for d in out.shape)):
            return call
        data = [self._constant_value(arg) for arg in call.args]
        if data[0] is None or (name in _NUMPY_ELEMENTWISE and any(d is None for d in data)):
            return call
        shape, dtype = tuple(int(d) for d in out.shape), str(out.dtype)
        if name in _NUMPY_ELEMENTWISE:
            value = _NUMPY_ELEMENTWISE[name](*(np.asarray(d, dtype) for d in data))
        elif name == "relax.permute_dims":
            axes = call.attrs.axes
            value = np.transpose(data[0], None if axes is None else [int(a) for a in axes])
        else:
            value = data[0].reshape(shape)
        if value.shape != shape:
            return call
        return relax.const(np.ascontiguousarray(value, dtype), dtype)

    def _constant_value(self, arg):
        if isinstance(arg, relax.Var):
            arg = self.lookup_binding(arg)
        if isinstance(arg, tvm.tirx.FloatImm | tvm.tirx.IntImm):  # a scalar operand
            return np.asarray(arg.value, str(arg.ty))
        if isinstance(arg, tvm.ir.expr.Constant):
            return arg.value.numpy()
        return None


@relax.transform.function_pass(opt_level=0)
class FoldConstantsWithNumpy:
    """Pre-compute arithmetic and reshapes of constants in numpy, bit for bit what FoldConstant
    gets.

    FoldConstant compiles every call it folds as a kernel of its own through LLVM: ~35 ms
    each, 14 s for the ~400 operations that batch-norm folding leaves in EfficientNet-Lite0.
    """

    def transform_function(self, func, mod, ctx):
        return _NumpyConstantFolder(mod).visit_expr(func)


def fold_constants() -> tvm.transform.Pass:
    """FoldConstant, with the calls numpy computes exactly done first."""
    return tvm.transform.Sequential([FoldConstantsWithNumpy(), relax.transform.FoldConstant()])


def fold_inference_constants() -> tvm.transform.Pass:
    """Fold batch-norm into the preceding convolution and pads into convolutions; rewrite clips
    and stacked reductions into forms the NHWC layout conversion follows."""
    return tvm.transform.Sequential([
        fold_constants(),
        relax.transform.FoldBatchnormToConv2D(),
        FoldPadIntoConv2D(),
        ClipToMinMax(),
        UnstackReductions(),
        DropIdentityBroadcasts(),
        fold_constants(),
    ])
