"""int8 layers rewritten for a CPU's dot product (pipeline.compile.dot_product): 1x1
convolutions and matmuls read their weights packed as [N/lanes][K/pair][lanes][pair] (what the
instruction multiplies), and, where asked (x86), depthwise ones sum their 8-bit products exactly
in float32 lanes."""

from __future__ import annotations

import numpy as np

from pipeline.compile.dot_product import DotProduct


def pack_for(dot: DotProduct, depthwise_in_float: bool):
    """Relax pass (NHWC/HWIO, weights folded to constants): 8-bit x int8 1x1 convolutions and
    matmuls whose data type `dot` multiplies become kernels that read their weights packed for
    it, which MetaSchedule can tensorize with its intrinsic; with `depthwise_in_float`, 8-bit
    depthwise convolutions sum in float32 lanes (see `_depthwise_call`). Other layers are left
    alone."""
    import tvm
    from tvm import relax

    conv2d, matmul = tvm.ir.Op.get("relax.nn.conv2d"), tvm.ir.Op.get("relax.matmul")

    @relax.expr_functor.mutator
    class Packer(relax.PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if call.op.same_as(conv2d) and _packable_conv(call, dot):
                return _packed_call(self.builder_, call.args[0],
                                    call.args[1].value.numpy()[0, 0], dot, "conv2d_1x1")
            if call.op.same_as(matmul) and _packable_matmul(call, dot):
                return _packed_call(self.builder_, call.args[0], call.args[1].value.numpy(),
                                    dot, "matmul")
            if depthwise_in_float and call.op.same_as(conv2d) and _depthwise_8bit(call):
                return _depthwise_call(self.builder_, call)
            return call

    @tvm.transform.module_pass(opt_level=0, name=f"PackFor{dot.name.upper()}")
    def transform(mod, _ctx):
        packer = Packer(mod)
        packer.builder_.update_func(mod.get_global_var("main"), packer.visit_expr(mod["main"]))
        return packer.builder_.get()

    return transform


def _u8_by_i8_const(call, data_dtypes: tuple[str, ...] = ("uint8",)) -> bool:
    from tvm.ir.expr import Constant

    data, weight = call.args
    return (isinstance(weight, Constant) and str(data.ty.dtype) in data_dtypes
            and str(weight.ty.dtype) == "int8" and str(call.ty.dtype) == "int32")


def _packable_conv(call, dot: DotProduct) -> bool:
    attrs = call.attrs
    if not _u8_by_i8_const(call, dot.data_dtypes) or str(attrs.data_layout) != "NHWC":
        return False
    h, w, k, _ = (int(d) for d in call.args[1].ty.shape)
    return (str(attrs.kernel_layout) == "HWIO" and (h, w) == (1, 1) and int(attrs.groups) == 1
            and all(int(s) == 1 for s in attrs.strides) and all(int(d) == 1 for d in attrs.dilation)
            and all(int(p) == 0 for p in attrs.padding) and k % dot.group == 0)


def _packable_matmul(call, dot: DotProduct) -> bool:
    return (_u8_by_i8_const(call, dot.data_dtypes) and call.args[1].ty.ndim == 2
            and int(call.args[1].ty.shape[0]) % dot.group == 0)


def pack_weights(weight: np.ndarray, dot: DotProduct) -> np.ndarray:
    """(K, N) -> (ceil(N/lanes), K/pair, lanes, pair) of dot's weight type, zero-padded
    outputs."""
    k, n = weight.shape
    lanes, pair = dot.lanes, dot.packed_group
    padded = np.zeros((k, -(-n // lanes) * lanes), dot.weight_dtype)
    padded[:, :n] = weight
    return np.ascontiguousarray(padded.reshape(k // pair, pair, -1, lanes).transpose(2, 0, 3, 1))


def _packed_call(builder, data, weight: np.ndarray, dot: DotProduct, kind: str):
    """data (..., K) x weight (K, N) -> (..., N) int32 with packed weights; padded outputs
    are sliced off outside the kernel. Where the instruction reads its inputs in runs of `pair`
    (`dot.pair`), the data comes in as (..., K/pair, pair) and the sum runs over both axes:
    MetaSchedule's auto-tensorization matches an intrinsic only where every index of its
    description is one loop variable."""
    from tvm import relax, te

    packed = pack_weights(weight, dot)
    k_total, n = weight.shape
    lanes, pair = dot.lanes, dot.packed_group
    name = dot.kernel(kind, str(data.ty.dtype))
    outputs = packed.shape[0] * lanes

    def compute(x, wp):
        k = te.reduce_axis((0, k_total), name="k")
        return te.compute(
            (*x.shape[:-1], outputs),
            lambda *i: te.sum(
                x[(*i[:-1], k)].astype("int32")
                * wp[i[-1] // lanes, k // pair, i[-1] % lanes, k % pair].astype("int32"),
                axis=k),
            name=name)

    def compute_in_pairs(x, wp):
        runs = te.reduce_axis((0, k_total // pair), name="k")
        within = te.reduce_axis((0, pair), name="kp")
        return te.compute(
            (*x.shape[:-2], outputs),
            lambda *i: te.sum(
                x[(*i[:-1], runs, within)].astype("int32")
                * wp[i[-1] // lanes, runs, i[-1] % lanes, within].astype("int32"),
                axis=[runs, within]),
            name=name)

    if dot.pair:
        leading = [int(d) for d in data.ty.shape][:-1]
        data = builder.emit(relax.op.reshape(data, (*leading, k_total // pair, pair)))
        compute = compute_in_pairs
    out = builder.emit_te(compute, data, relax.const(packed), primfunc_name_hint=name)
    if outputs == n:
        return out
    axis = out.ty.ndim - 1
    return relax.op.strided_slice(out, axes=[axis], begin=[0], end=[n])


def _depthwise_8bit(call) -> bool:
    attrs = call.attrs
    if not (_u8_by_i8_const(call, ("uint8", "int8")) and str(attrs.data_layout) == "NHWC"
            and str(attrs.kernel_layout) == "HWIO" and str(attrs.out_layout) == "NHWC"):
        return False
    kh, kw, per_group, channels = (int(d) for d in call.args[1].ty.shape)
    return (per_group == 1 and int(attrs.groups) == channels == int(call.args[0].ty.shape[3])
            and kh * kw * 255 * 127 < 2 ** 24  # every partial sum exact in float32
            and all(int(d) == 1 for d in attrs.dilation))


def _depthwise_call(builder, call):
    """An 8-bit depthwise convolution whose integer sum is computed in float32: each product of
    an 8-bit input and an int8 weight, and each sum of at most 25 of them, is an integer below
    2**24, so float32 holds it exactly and the int32 result is bit for bit the same. x86 has
    16-lane float multiply-adds but only a slow 32-bit integer multiply (vpmulld), and a
    depthwise convolution has no 4-element dot products for VNNI (the README's quantization
    section has the timings)."""
    from tvm import te, tirx

    data, weight = call.args
    attrs = call.attrs
    kh, kw, _, channels = (int(d) for d in weight.ty.shape)
    batch, height, width, _ = (int(d) for d in data.ty.shape)
    top, left, bottom, right = (int(p) for p in attrs.padding)
    stride_h, stride_w = (int(s) for s in attrs.strides)
    out_h = (height + top + bottom - kh) // stride_h + 1
    out_w = (width + left + right - kw) // stride_w + 1
    zero = tirx.const(0, str(data.ty.dtype))

    def compute(x, w):
        padded = te.compute(
            (batch, height + top + bottom, width + left + right, channels),
            lambda n, h, v, c: tirx.if_then_else(
                tirx.all(h >= top, h < height + top, v >= left, v < width + left),
                x[n, h - top, v - left, c], zero),
            name="pad")
        r = te.reduce_axis((0, kh), name="r")
        s = te.reduce_axis((0, kw), name="s")
        total = te.compute(
            (batch, out_h, out_w, channels),
            lambda n, i, j, c: te.sum(
                padded[n, i * stride_h + r, j * stride_w + s, c].astype("float32")
                * w[r, s, 0, c].astype("float32"), axis=[r, s]),
            name="depthwise_sum")
        return te.compute(total.shape, lambda *i: total[i].astype("int32"),
                          name="depthwise_int32")

    return builder.emit_te(compute, data, weight, primfunc_name_hint="conv2d_depthwise_8bit")
