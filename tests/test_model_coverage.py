"""Models from outside: the classic CNN architectures by every route (torch.export, ONNX as old
zoo files wrote it, ONNX as current exporters write it), built for the host with no tuning and
compared with the framework; layout conversion that never breaks a build; a clear error for an
operator TVM cannot import; the inspect command."""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from pipeline import build as build_cli
from pipeline import inspect as inspect_cli
from pipeline.artifact.manifest import MANIFEST_NAME
from pipeline.frontend.importer import import_model
from pipeline.frontend.models import _from_torch, load_model
from pipeline.verify.board import degenerate_output
from tests import classic_cnns

ROUTES = ["torch", f"onnx{classic_cnns.OLD_OPSET}", f"onnx{classic_cnns.CURRENT_OPSET}"]


def _compiled(mod):
    import tvm
    from tvm import relax

    from pipeline.base.devices import load_device
    from pipeline.compile.lowering import lower

    target = load_device("host").tvm_target()
    vm = relax.VirtualMachine(tvm.compile(lower(mod, target), target=target), tvm.cpu())
    return lambda x: vm["main"](tvm.runtime.tensor(x)).numpy()


def _loaded(name, route, tmp_path):
    if route == "torch":
        return _from_torch(name, "torch", name, classic_cnns.build(name), classic_cnns.INPUT_SHAPE)
    opset = int(route.removeprefix("onnx"))
    return load_model(str(classic_cnns.export_onnx(name, tmp_path / f"{name}.onnx", opset)))


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", sorted(classic_cnns.ARCHITECTURES))
def test_classic_architecture_builds_and_matches_the_framework(name, route, tmp_path):
    model = _loaded(name, route, tmp_path)
    if route == f"onnx{classic_cnns.OLD_OPSET}":  # really as old files were: the hard cases
        proto = onnx.load(str(model.onnx_path))
        ops = {node.op_type for node in proto.graph.node}
        weights = {init.name for init in proto.graph.initializer}
        assert weights <= {i.name for i in proto.graph.input}
        assert ("Dropout" in ops) == ("Gemm" in ops), ops
    run = _compiled(import_model(model).mod)
    for seed in (0, 1):
        x = classic_cnns.random_input(seed)
        expected = model.reference_output(x)
        np.testing.assert_allclose(run(x), expected, rtol=1e-4,
                                   atol=1e-5 * float(np.abs(expected).max()))
    # The comparison means something: the output varies with the input.
    assert degenerate_output(expected, model.reference_output(classic_cnns.random_input(0))) \
        is None


def test_old_files_hold_the_forms_that_broke_imports(tmp_path):
    """Guards the matrix above: its old-opset files hold the forms that failed with TVM internal
    errors (a two-output Dropout, the variadic Sum, Upsample) and the classic LRN; the current
    ones the shape arithmetic that only a static input shape resolves."""
    def ops(opset):
        found = set()
        for name in classic_cnns.ARCHITECTURES:
            path = classic_cnns.export_onnx(name, tmp_path / f"{name}-{opset}.onnx", opset)
            proto = onnx.load(str(path))
            assert proto.opset_import[0].version == opset
            found |= {(n.op_type, len(n.output)) for n in proto.graph.node}
        return found

    assert {("Dropout", 2), ("Sum", 1), ("Upsample", 1), ("LRN", 1)} <= ops(9)
    assert {("Shape", 1), ("ConstantOfShape", 1), ("Gather", 1), ("Resize", 1), ("Gelu", 1),
            ("HardSwish", 1)} <= ops(classic_cnns.CURRENT_OPSET)


def test_layout_conversion_fences_an_op_it_cannot_follow_and_reports_the_transposes():
    """A channel shuffle, a flatten after pooling, and a stacked max whose layout inference
    fails inside TVM: the build goes on in NHWC, with transposes around what stays NCHW."""
    import tvm
    from tvm import relax
    from tvm.script import relax as R

    from pipeline.compile.layout import convert_layout

    @tvm.script.ir_module
    class Net:
        @R.function
        def main(x: R.Tensor((1, 3, 8, 8), "float32"), wa: R.Tensor((8, 3, 3, 3), "float32"),
                 wb: R.Tensor((8, 8, 1, 1), "float32")):
            with R.dataflow():
                a = R.nn.conv2d(x, wa, padding=[1, 1, 1, 1])
                m = R.max(R.stack((a, R.nn.relu(a)), axis=0), axis=[0], keepdims=False)
                c = R.nn.conv2d(m, wb)
                groups = R.reshape(c, R.shape([1, 2, 4, 8, 8]))
                swapped = R.permute_dims(groups, [0, 2, 1, 3, 4])
                shuffled = R.reshape(swapped, R.shape([1, 8, 8, 8]))
                pooled = R.nn.max_pool2d(shuffled, pool_size=[2, 2], strides=[2, 2])
                flat = R.reshape(pooled, R.shape([1, 128]))
                R.output(flat)
            return flat

    rng = np.random.default_rng(0)
    weights = {"wa": rng.standard_normal((8, 3, 3, 3)).astype("float32"),
               "wb": rng.standard_normal((8, 8, 1, 1)).astype("float32")}
    mod = relax.transform.BindParams("main", weights)(Net)
    with pytest.raises(RuntimeError, match="Invalid SLayout"):  # what TVM alone does
        relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "HWIO"]})(mod)
    converted, report = convert_layout(mod)
    assert report.fenced == ("relax.stack",)
    # In: the input to NHWC; around the fenced stack: out and back; before each reshape: out.
    assert report.transposes_added == 5
    assert report.kept_in_nchw.count("relax.reshape") == 1
    assert "5 transposes" in report.describe() and "relax.stack" in report.describe()
    convs = [b.value for block in converted["main"].body.blocks for b in block.bindings
             if getattr(b.value.op, "name", "") == "relax.nn.conv2d"]
    assert [str(c.attrs.data_layout) for c in convs] == ["NHWC", "NHWC"]
    x = rng.standard_normal((1, 3, 8, 8)).astype("float32")
    target = tvm.target.Target("llvm")
    expected = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(_compiled(mod)(x), expected, rtol=1e-5, atol=1e-4)


class _WithCelu(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.flatten(nn.functional.celu(self.conv(x)), 1)


def _celu_onnx(path):
    torch.onnx.export(_WithCelu().eval(), (torch.zeros(1, 3, 8, 8),), str(path),
                      input_names=["data"], opset_version=17, dynamo=False)
    return path


def test_an_unsupported_operator_is_one_paragraph_naming_it_and_nothing_is_written(
        tmp_path, capsys):
    path = _celu_onnx(tmp_path / "celu.onnx")
    out, logs = tmp_path / "out", tmp_path / "logs"
    status = build_cli.main(["--device", "host", "--model", str(path), "--out", str(out),
                             "--logs", str(logs)])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and sum(x.startswith("error") for x in err.splitlines()) == 1
    assert "ONNX operator Celu (node '/Celu', opset 17)" in last, last
    assert "pipeline.inspect" in last and "another opset" in last
    assert not out.exists() and not logs.exists()


def test_inspect_lists_an_unsupported_operator_and_exits_2(tmp_path, capsys):
    path = _celu_onnx(tmp_path / "celu.onnx")
    assert inspect_cli.main([str(path)]) == 2
    out = capsys.readouterr().out
    assert "Conv" in out and "Celu" in out
    assert [line.split()[-2:] for line in out.splitlines() if line.strip().startswith("Celu")] \
        == [["NOT", "SUPPORTED"]]
    assert "cannot be built: " in out


def test_inspect_on_efficientnet_lists_its_36_tasks_and_their_committed_records(capsys):
    from pipeline.base.paths import TUNING_LOGS

    assert inspect_cli.main(["efficientnet-lite0", "--device", "x86-avx512"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("fused_",
                                                                                  "mean",
                                                                                  "transpose"))]
    assert "tasks MetaSchedule tunes for x86-avx512: 36 (36 with records" in out, out
    assert len(rows) == 36 and all(int(row[2]) > 0 for row in rows)
    folder = TUNING_LOGS / "x86-avx512" / "efficientnet-lite0-fp32"
    # Every valid record in the committed logs (failed candidates are timed at 1e10 s) belongs
    # to one of the listed tasks.
    records = [json.loads(line)[1] for line in
               (folder / "database_tuning_record.json").read_text().splitlines()]
    valid = sum(all(float(s) < 1e9 for s in record[1]) for record in records)
    assert sum(int(row[2]) for row in rows) == valid
    assert "layout: NHWC with 2 transposes added around ops kept in NCHW (relax.reshape x1)" in out


@pytest.mark.slow
def test_an_old_zoo_file_builds_verifies_and_a_uniform_output_is_called_out(
        tmp_path, capsys, host_farm):
    """End to end through the CLI: an opset-9 AlexNet-style file verified against ONNX Runtime
    on a board; the same file with its last layer zeroed (a uniform softmax) is flagged."""
    path = classic_cnns.export_onnx("squeezenet", tmp_path / "squeeze.onnx",
                                    classic_cnns.OLD_OPSET)
    common = ["--device", "host", "--tracker", str(host_farm), "--logs", str(tmp_path / "logs")]
    assert build_cli.main([*common, "--model", str(path), "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    check = manifest["verification"]
    assert check["max_abs_error"] < 1e-5 and check["reference_degenerate"] is None
    assert "proves little" not in printed

    proto = onnx.load(str(path))
    last_conv = [n for n in proto.graph.node if n.op_type == "Conv"][-1]
    for init in proto.graph.initializer:
        if init.name in last_conv.input[1:]:
            init.CopyFrom(onnx.numpy_helper.from_array(
                np.zeros_like(onnx.numpy_helper.to_array(init)), init.name))
    onnx.save(proto, str(tmp_path / "uniform.onnx"))
    assert build_cli.main([*common, "--model", str(tmp_path / "uniform.onnx"), "--out",
                           str(tmp_path / "u")]) == 0
    printed = capsys.readouterr().out
    check = json.loads((tmp_path / "u" / MANIFEST_NAME).read_text())["verification"]
    assert check["reference_degenerate"] == "is uniform (every value 0.1)"
    assert "the model's output is uniform (every value 0.1): the comparison proves little" \
        in printed
