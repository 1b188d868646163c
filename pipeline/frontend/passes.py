"""Relax rewrites of our own: the ones TVM 0.27 does not ship."""

from __future__ import annotations

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


def fold_inference_constants() -> tvm.transform.Pass:
    """Fold batch-norm into the preceding convolution and pads into convolutions."""
    return tvm.transform.Sequential([
        relax.transform.FoldConstant(),
        relax.transform.FoldBatchnormToConv2D(),
        FoldPadIntoConv2D(),
        ClipToMinMax(),
        relax.transform.FoldConstant(),
    ])
