"""One pointwise layer as a float Relax module, for the int8 offset tests (x86 and aarch64)."""

import numpy as np


def one_pointwise_layer(op: str, after_relu: bool = False, channels: int = 12):
    """x -> a 1x1 convolution (or a matmul) with random weights; with `after_relu`, the layer
    reads relu(x), an input non-negative by construction."""
    from tvm import relax

    rng = np.random.default_rng(1)
    builder = relax.BlockBuilder()
    if op == "conv2d":
        x = relax.Var("x", relax.TensorType((1, channels, 5, 5), "float32"))
        weight = rng.standard_normal((20, channels, 1, 1)).astype("float32")
    else:
        x = relax.Var("x", relax.TensorType((1, channels), "float32"))
        weight = rng.standard_normal((channels, 20)).astype("float32")
    with builder.function("main", [x]):
        with builder.dataflow():
            data = builder.emit(relax.op.nn.relu(x)) if after_relu else x
            call = (relax.op.nn.conv2d(data, relax.const(weight)) if op == "conv2d"
                    else relax.op.matmul(data, relax.const(weight)))
            out = builder.emit_output(call)
        builder.emit_func_output(out)
    return builder.get(), weight, x.ty.shape


def int8_reference(op: str, q: np.ndarray, weight: np.ndarray, x_scale: np.float32):
    """What the int8 layer computes, in numpy: integer sums of `q` (the input on its grid) and
    the per-channel int8 weights, rescaled to float32. Also the int8 weights, for checks."""
    from pipeline.quantization.weights import quantize_weight

    w_scale, w_int8 = quantize_weight(weight, 0 if op == "conv2d" else 1)
    if op == "conv2d":
        acc = np.einsum("nchw,oc->nohw", q, w_int8[:, :, 0, 0].astype(np.int64))
        scale = (w_scale.reshape(-1) * x_scale).reshape(1, -1, 1, 1)
    else:
        acc = q @ w_int8.astype(np.int64)
        scale = (w_scale.reshape(-1) * x_scale).reshape(1, -1)
    return acc.astype(np.float32) * scale.astype(np.float32), w_int8
