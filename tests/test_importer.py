"""Import into Relax, compile untuned for the host, and compare with the framework."""

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from pipeline.base.errors import UserError
from pipeline.frontend.importer import import_model
from pipeline.frontend.models import load_model
from pipeline.frontend.zoo.efficientnet_lite import SameConv2d


def _run(imported, x):
    import tvm
    from tvm import relax

    from pipeline.base.devices import load_device
    from pipeline.compile.lowering import lower

    target = load_device("host").tvm_target()
    executable = tvm.compile(lower(imported.mod, target), target=target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _ops(mod) -> set[str]:
    from tvm import relax

    found = set()
    relax.analysis.post_order_visit(
        mod["main"], lambda e: found.add(e.op.name) if isinstance(e, relax.Call)
        and hasattr(e.op, "name") else None)
    return found


def test_torch_import_folds_batch_norm_and_matches_torch(tiny_model):
    imported = import_model(tiny_model)
    assert "relax.nn.batch_norm" not in _ops(imported.mod)
    assert imported.output_shape == (1, 10)
    x = tiny_model.sample_input()
    np.testing.assert_allclose(_run(imported, x), tiny_model.reference_output(x), atol=1e-5)


class _TfPadded(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = SameConv2d(3, 8, 3, 2, bias=False)
        self.bn = torch.nn.BatchNorm2d(8)
        self.bn.running_mean.uniform_(-1, 1)
        self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        return torch.nn.functional.relu6(self.bn(self.conv(x)))


def test_tf_same_padding_is_folded_into_the_convolution(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.frontend.zoo.small.TinyCNN", lambda: _TfPadded())
    model = load_model("tiny-cnn", (1, 3, 16, 16))
    imported = import_model(model)
    assert {"relax.nn.pad", "relax.nn.batch_norm"}.isdisjoint(_ops(imported.mod))
    x = model.sample_input()
    np.testing.assert_allclose(_run(imported, x), model.reference_output(x), atol=1e-5)


def test_onnx_import_matches_onnxruntime(tmp_path, tiny_model):
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(tiny_model.torch_module, (torch.zeros(1, 3, 32, 32),), str(path),
                      input_names=["image"], dynamo=False, opset_version=17)
    model = load_model(str(path))
    assert model.input_name == "image"
    x = model.sample_input()
    np.testing.assert_allclose(_run(import_model(model), x), model.reference_output(x),
                               atol=1e-5)


def _old_zoo_style_onnx(path) -> None:
    """An opset-9 graph as old exporters wrote them: weights listed as graph inputs too,
    BatchNormalization unfused, and a Constant node generating Reshape's target shape."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype("float32"), "w")
    scale = numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "scale")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "bias")
    mean = numpy_helper.from_array(rng.standard_normal(4).astype("float32"), "mean")
    var = numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype("float32"), "var")
    fc = numpy_helper.from_array(rng.standard_normal((5, 4 * 4 * 4)).astype("float32"), "fc")
    fc_bias = numpy_helper.from_array(rng.standard_normal(5).astype("float32"), "fc_bias")
    inits = [w, scale, bias, mean, var, fc, fc_bias]
    nodes = [
        helper.make_node("Conv", ["data", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], ["b"],
                         epsilon=1e-3),
        helper.make_node("Relu", ["b"], ["r"]),
        helper.make_node("Constant", [], ["shape"], value=numpy_helper.from_array(
            np.array([1, -1], dtype="int64"))),
        helper.make_node("Reshape", ["r", "shape"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_bias"], ["out"], transB=1),
    ]
    inputs = [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 8, 8])]
    inputs += [helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims))
               for t in inits]
    graph = helper.make_graph(nodes, "old", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 5])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    onnx.save(model, str(path))


def test_old_opset_with_weights_as_inputs_and_constant_nodes(tmp_path):
    path = tmp_path / "old.onnx"
    _old_zoo_style_onnx(path)
    model = load_model(str(path))
    assert model.input_name == "data" and model.input_shape == (1, 3, 8, 8)
    x = model.sample_input()
    np.testing.assert_allclose(_run(import_model(model), x), model.reference_output(x),
                               atol=1e-4)


def test_onnx_with_dynamic_batch_needs_a_shape(tmp_path, tiny_model):
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(tiny_model.torch_module, (torch.zeros(1, 3, 32, 32),), str(path),
                      input_names=["image"], dynamic_axes={"image": {0: "batch"}}, dynamo=False)
    with pytest.raises(UserError, match="dynamic shape"):
        load_model(str(path))
    model = load_model(str(path), (2, 3, 32, 32))
    x = model.sample_input()
    np.testing.assert_allclose(_run(import_model(model), x), model.reference_output(x),
                               atol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet-v2", "resnet-18"])
def test_zoo_nets_compile_and_match_torch(name):
    model = load_model(name)
    imported = import_model(model)
    assert {"relax.nn.batch_norm", "relax.nn.pad"}.isdisjoint(_ops(imported.mod))
    x = model.sample_input()
    expected = model.reference_output(x)
    got = _run(imported, x)
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
