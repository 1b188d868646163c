"""What in a Relax module int8 can quantize: convolutions and matmuls with constant
weights, the tensors they read, and what those tensors are by construction."""

from __future__ import annotations

from pipeline.quantization.plan import Layer, LayerId
from pipeline.quantization.rounding import Geometry

QUANTIZED_OPS = ("relax.nn.conv2d", "relax.matmul")


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
            if not (isinstance(call, relax.Call) and op_name(call) in QUANTIZED_OPS
                    and isinstance(call.args[1], Constant)
                    and call.args[0].ty.dtype == "float32"):
                continue
            data = call.args[0]
            index = next((i for i, t in enumerate(tensors) if t.same_as(data)), None)
            if index is None:
                index = len(tensors)
                tensors.append(data)
            kind = op_name(call).rsplit(".", 1)[1]
            name = str(LayerId(kind, counts.get(kind, 0)))
            counts[kind] = counts.get(kind, 0) + 1
            layers.append(Layer(name, index, _non_negative(data, bindings), is_depthwise(call)))
            calls.append(call)
    return layers, calls, tensors


def is_depthwise(call) -> bool:
    if op_name(call) != "relax.nn.conv2d" or str(call.attrs.data_layout) != "NCHW":
        return False
    channels = int(call.args[0].ty.shape[1])
    return int(call.attrs.groups) == channels > 1 and int(call.args[1].ty.shape[1]) == 1


def op_name(call) -> str:
    import tvm

    return call.op.name if isinstance(call.op, tvm.ir.Op) else ""


def _non_negative(expr, bindings) -> bool:
    """True when `expr` is a ReLU/ReLU6 output: maximum(_, c >= 0), relu, or a minimum of one."""
    from tvm import relax
    from tvm.ir.expr import Constant

    value = bindings.get(expr)
    if not isinstance(value, relax.Call):
        return False
    name = op_name(value)
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


def weight_geometry(call) -> Geometry | None:
    """How `call` reads its input, for compensated rounding; None where it is not supported
    (grouped but not depthwise convolutions, layouts other than NCHW/OIHW)."""
    if op_name(call) == "relax.matmul":
        return Geometry("matmul")
    attrs = call.attrs
    if (str(attrs.data_layout), str(attrs.kernel_layout)) != ("NCHW", "OIHW"):
        return None
    if is_pointwise(call) and all(int(s) == 1 for s in attrs.strides):
        return Geometry("pointwise")
    if int(attrs.groups) != 1 and not is_depthwise(call):
        return None
    return Geometry("depthwise" if is_depthwise(call) else "conv",
                    tuple(int(d) for d in list(call.args[1].ty.shape)[2:]),
                    tuple(int(s) for s in attrs.strides),
                    tuple(int(p) for p in attrs.padding),
                    tuple(int(d) for d in attrs.dilation))


def is_pointwise(call) -> bool:
    """A matmul, or a 1x1 convolution without padding or groups."""
    if op_name(call) != "relax.nn.conv2d":
        return True
    attrs = call.attrs
    return ([int(d) for d in call.args[1].ty.shape][2:] == [1, 1] and int(attrs.groups) == 1
            and all(int(p) == 0 for p in attrs.padding))


def channel_axis(call) -> int:
    """Output channels of the weight: axis 0 of OIHW conv weights, the last of (K, N) matmul's."""
    return 0 if op_name(call) == "relax.nn.conv2d" else call.args[1].ty.ndim - 1
