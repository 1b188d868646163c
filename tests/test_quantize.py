"""int8 and fp16: calibration, the int8 rewrite, what the compiled module computes in, the
accuracy gate, and a digits CNN trained here whose int8 artifact must stay within a point."""

import threading

import numpy as np
import pytest

from pipeline.artifact.manifest import CALIBRATION_NAME, read_manifest
from pipeline.artifact.tuning_logs import (
    QUANTIZATION,
    LoggedQuantization,
    record_quantization,
)
from pipeline.base.devices import load_device
from pipeline.base.errors import UserError
from pipeline.base.variant import Variant
from pipeline.compile.build import build_library
from pipeline.compile.lowering import lower
from pipeline.frontend.importer import import_model
from pipeline.frontend.models import load_model
from pipeline.job.build_job import JobSpec, run_job
from pipeline.job.rebuild_job import rebuild
from pipeline.quantization.calibration import calibrate
from pipeline.quantization.datasets import evaluation_sets, load_dataset
from pipeline.quantization.graph import QUANTIZED_OPS, op_name
from pipeline.quantization.observers import observer_for, relative_noise
from pipeline.quantization.policy import VNNI, policy_for
from pipeline.quantization.rewrite import apply_int8
from pipeline.quantization.stage import QuantizeOptions, calibration_record, quantize
from pipeline.quantization.weights import quantize_weight
from tests import digits

# 16 inputs per evaluation set: one near-tie of the top two classes is 6 points of top-1, so
# the gate here is wide; the tests that exercise the gate set their own.
FAST = {"calibration_count": 8, "eval_count": 16, "max_drop_points": 10.0}


@pytest.fixture(scope="module")
def tiny_imported(tiny_model):
    return import_model(tiny_model)


def _eight_bit(operands: tuple[str, str]) -> bool:
    """8-bit data and int8 weights; on an AVX2-only CPU vpmaddwd reads them stored widened to
    int16 (exact), and only there."""
    from pipeline.compile.x86.intrinsic import dot_product_for

    dot = dot_product_for(load_device("host").tvm_target())
    weights = {"int8", dot.weight_dtype} if dot is not None else {"int8"}
    return operands[0] in ("int8", "uint8") and operands[1] in weights


def test_int8_library_computes_every_conv_and_matmul_in_int8(tmp_path, tiny_model, tiny_imported,
                                                             host_device):
    quantized = quantize(tiny_imported, tiny_model, host_device,
                         QuantizeOptions(variant=Variant.INT8, **FAST))
    assert quantized.quantization.int8_layers == 5
    built = build_library(lower(quantized.mod, host_device.tvm_target()), host_device, None,
                          tmp_path / "lib.so")
    # Five quantized layers, five kernels, each fed 8-bit data and int8 weights: no float
    # convolution or matmul is left in the module that code generation received.
    assert len(built.operands) == 5
    assert all(_eight_bit(ops) for ops in built.operands.values()), built.operands
    # uint8 for ReLU6 outputs; on VNNI CPUs also for the signed inputs of 1x1 convolutions and
    # matmuls (zero point 128), leaving int8 only where the input may be negative and the
    # kernel pads it (the image's 3x3 convolution).
    uint8 = sorted(ops[0] for ops in built.operands.values()).count("uint8")
    assert uint8 == (4 if policy_for(host_device.tvm_target()) is VNNI else 3)
    # Requantization is fused: some int8 kernel ends in the next layer's round-and-cast.
    assert any("conv2d" in name and "round" in name for name in built.operands)
    report = quantized.accuracy
    assert report.sqnr_db > 25 and report.top1_agreement >= 0.9
    # Measured on the crops as given and three shifted sets; the gate's figure is the worst.
    specs = [r.eval_data.spec for r in quantized.evaluations]
    assert specs == ["builtin", "builtin (other-resize)", "builtin (camera)",
                     "builtin (other-photos)"]
    assert report in quantized.evaluations
    assert report.drop_points == max(r.drop_points for r in quantized.evaluations)


DATA_DIGESTS = """
from pipeline.quantization.datasets import evaluation_sets
print(*(d.sha256 for d in evaluation_sets("builtin", (1, 3, 64, 64), 6)))
"""


def test_builtin_data_is_the_same_bits_whatever_kernels_the_cpu_runs():
    """Calibration and evaluation data are hashed into the manifest and matched against the
    logs' calibration record: torch's scalar kernels (what a CPU without AVX2 runs) and this
    CPU's own must make the same crops."""
    import os
    import subprocess
    import sys

    digests = {subprocess.run([sys.executable, "-c", DATA_DIGESTS], capture_output=True,
                              text=True, check=True, env={**os.environ, **env}).stdout
               for env in ({}, {"ATEN_CPU_CAPABILITY": "default"})}
    assert len(digests) == 1 and len(next(iter(digests)).split()) == 4, digests


def test_int8_logs_record_their_calibration_and_a_build_of_the_same_data_reuses_it(
        tmp_path, tiny_model, tiny_imported, host_device, caplog):
    """The calibration the int8 logs were tuned with is applied as recorded (no calibration
    and no sensitivity run, the same plan on every CPU) when the model, the samples and the
    method are the same; other samples are calibrated anew."""
    options = QuantizeOptions(variant=Variant.INT8, **FAST)
    first = quantize(tiny_imported, tiny_model, host_device, options)
    logs = tmp_path / "logs"
    logs.mkdir()
    record_quantization(logs, LoggedQuantization((), 10.0, calibration_record(
        tiny_model, first, options)))
    caplog.set_level("INFO", logger="pipeline")
    caplog.clear()
    again = quantize(tiny_imported, tiny_model, host_device, options, records=logs)
    assert "not calibrated again" in caplog.text and "sensitivity of" not in caplog.text
    assert again.plan == first.plan and again.quantization == first.quantization

    caplog.clear()
    other = quantize(tiny_imported, tiny_model, host_device,
                     QuantizeOptions(variant=Variant.INT8, **{**FAST, "calibration_count": 9}),
                     records=logs)
    assert "calibrating anew" in caplog.text and other.quantization.calibration.count == 9

    damaged = (logs / QUANTIZATION).read_text().replace('"count": 8', '"count": "eight"')
    (logs / QUANTIZATION).write_text(damaged)
    with pytest.raises(UserError, match=f"{QUANTIZATION}.*count must be int"):
        quantize(tiny_imported, tiny_model, host_device, options, records=logs)


def test_the_int8_check_sees_a_float_layer(tmp_path, tiny_model, tiny_imported, host_device):
    quantized = quantize(tiny_imported, tiny_model, host_device,
                         QuantizeOptions(variant=Variant.INT8,
                                         keep_float=frozenset({"conv2d_0"}), **FAST))
    built = build_library(lower(quantized.mod, host_device.tvm_target()), host_device, None,
                          tmp_path / "lib.so")
    floats = [name for name, ops in built.operands.items() if not _eight_bit(ops)]
    assert len(floats) == 1 and built.operands[floats[0]] == ("float32", "float32")
    assert quantized.quantization.float_layers == ("conv2d_0",)


def test_int8_weights_are_stored_as_int8(tiny_model, tiny_imported, host_device):
    from tvm import relax
    from tvm.ir.expr import Constant

    quantized = quantize(tiny_imported, tiny_model, host_device,
                         QuantizeOptions(variant=Variant.INT8, **FAST))
    weights = []

    def visit(expr):
        if isinstance(expr, relax.Call) and op_name(expr) in QUANTIZED_OPS:
            weights.append(expr.args[1])

    relax.analysis.post_order_visit(quantized.mod["main"], visit)
    assert len(weights) == 5
    assert all(isinstance(w, Constant) and w.value.dtype == "int8" for w in weights)


def test_depthwise_filters_keep_their_sums_through_rounding():
    rng = np.random.default_rng(4)
    weight = (rng.standard_normal((64, 1, 5, 5)) + 0.2).astype("float32")
    scale, quantized = quantize_weight(weight, 0)
    exact = (weight / scale).reshape(64, -1)
    integers = quantized.reshape(64, -1).astype(np.int64)
    plain = np.round(exact)
    assert (plain.sum(axis=1) != np.round(exact.sum(axis=1))).sum() > 10  # rounding loses sums
    np.testing.assert_array_equal(integers.sum(axis=1), np.round(exact.sum(axis=1)))
    assert np.abs(integers - exact).max() < 1 and np.abs(integers).max() == 127
    # Dense filters round to nearest, as before.
    dense = rng.standard_normal((8, 4, 3, 3)).astype("float32")
    dense_scale, dense_q = quantize_weight(dense, 0)
    np.testing.assert_array_equal(dense_q, np.round(dense / dense_scale))


def test_compensated_rounding_beats_nearest_on_the_model(tiny_model, tiny_imported):
    from dataclasses import replace

    from pipeline.compile.host import compile_for_host

    data = load_dataset("builtin", tiny_model.input_shape, 24, 0).inputs
    policy = policy_for(load_device("host").tvm_target())
    plan = calibrate(tiny_imported.mod, data[:8], observer_for("percentile"))
    assert len(plan.rounding) == 5 and all(plan.rounding)  # every layer has a recorded rounding
    reference = np.concatenate([tiny_model.reference_output(x[None]) for x in data[8:]])

    def noise(chosen_plan) -> float:
        run = compile_for_host(apply_int8(tiny_imported.mod, chosen_plan, policy))
        outputs = np.concatenate([run(x[None])[0] for x in data[8:]])
        return float(np.sum((outputs - reference) ** 2))

    # On inputs calibration did not see, the output error is below nearest rounding's (0.86x
    # here, where activation rounding is most of the error; the weights' share is
    # test_rounding's).
    compensated, nearest = noise(plan), noise(replace(plan, rounding=()))
    assert compensated < 0.9 * nearest, (compensated, nearest)


def _threshold(values: np.ndarray, top: float, method: str) -> float:
    return observer_for(method, 99.99).tensor_range(values, top, 127).threshold


def test_calibration_methods_choose_different_ranges():
    rng = np.random.default_rng(0)
    heavy = np.abs(rng.standard_t(2, 200_000)).astype("float32")  # long tail
    relu = np.concatenate([heavy, np.zeros(200_000, "float32")])  # half exact zeros
    top = float(heavy.max())
    assert _threshold(heavy, top, "minmax") == top
    percentile = _threshold(heavy, top, "percentile")
    assert percentile == pytest.approx(np.percentile(heavy, 99.99))
    entropy = _threshold(heavy, top, "entropy")
    assert 0 < entropy < top
    # Exact zeros quantize exactly at any threshold: they must not pull the KL threshold down.
    relu_entropy = _threshold(relu, top, "entropy")
    assert relu_entropy == pytest.approx(entropy, rel=0.05)
    # The least error power clips the long tail, but not a bounded uniform range.
    mse = _threshold(heavy, top, "mse")
    assert 0 < mse < 0.75 * top
    clipped = relative_noise(heavy, mse, 127)
    assert clipped < relative_noise(heavy, percentile, 127)
    uniform = rng.uniform(0, 6, 100_000).astype("float32")
    assert _threshold(uniform, float(uniform.max()), "mse") \
        == pytest.approx(float(uniform.max()), rel=0.02)


def test_the_accuracy_gate_refuses_and_force_records_it(tiny_model, tiny_imported, host_device):
    # The entropy method clips tiny-cnn's seeded activations hard: a real, reproducible drop.
    options = QuantizeOptions(variant=Variant.INT8, method="entropy", fallback_limit=0,
                              **{**FAST, "max_drop_points": 1.0})
    refused = r"Not packaged.*most sensitive first: (conv2d|matmul)_\d.*--force"
    with pytest.raises(UserError, match=refused):
        quantize(tiny_imported, tiny_model, host_device, options)
    forced = quantize(tiny_imported, tiny_model, host_device,
                      QuantizeOptions(variant=Variant.INT8, method="entropy", fallback_limit=0,
                                      force=True, **{**FAST, "max_drop_points": 1.0}))
    assert forced.accuracy.forced and forced.accuracy.drop_points > 1.0


def test_the_fallback_keeps_noisy_layers_in_float(tiny_model, tiny_imported, host_device):
    options = QuantizeOptions(variant=Variant.INT8, method="entropy", fallback_limit=5,
                              **{**FAST, "max_drop_points": 1.0})
    quantized = quantize(tiny_imported, tiny_model, host_device, options)
    info = quantized.quantization
    assert info.fallback_layers
    assert set(info.fallback_layers) <= set(info.float_layers)
    assert quantized.accuracy.drop_points <= 1.0
    # The most sensitive layers (lowest SQNR with only them in int8) went to float first.
    assert sorted(info.sensitivity) == [f"conv2d_{i}" for i in range(4)] + ["matmul_0"]
    by_sensitivity = sorted(info.sensitivity, key=info.sensitivity.get)
    assert list(info.fallback_layers) == by_sensitivity[:len(info.fallback_layers)]


def test_host_module_runs_inputs_side_by_side_in_order(tiny_model, tiny_imported):
    """Calibration and the accuracy runs go through `map`: a virtual machine per thread, results
    in input order, the same as one at a time, and as many calibration plans as runs."""
    from pipeline.compile.host import compile_for_host

    module = compile_for_host(tiny_imported.mod)
    inputs = [tiny_model.sample_input(seed=s) for s in range(9)]
    one_by_one = [module(x)[0] for x in inputs]
    threads = set()
    side_by_side = list(module.map(inputs, then=lambda i, out: (
        i, out[0], threads.add(threading.get_ident()))))
    assert [i for i, _, _ in side_by_side] == list(range(9))
    for (_, got, _), expected in zip(side_by_side, one_by_one, strict=True):
        np.testing.assert_array_equal(got, expected)
    assert 1 <= len(threads) <= module.workers
    data = load_dataset("builtin", tiny_model.input_shape, 8, 0).inputs
    first, second = (calibrate(tiny_imported.mod, data, observer_for("mse", 99.99))
                     for _ in range(2))
    assert first == second


def test_the_simulation_computes_what_the_int8_module_computes(tiny_model, tiny_imported):
    from pipeline.compile.host import compile_for_host
    from pipeline.quantization.accuracy import sqnr_db
    from pipeline.quantization.sensitivity import Simulation

    data = load_dataset("builtin", tiny_model.input_shape, 14, 0).inputs
    plan = calibrate(tiny_imported.mod, data[:8], observer_for("mse"))
    held_out = [data[8:11], data[11:]]
    references = [np.concatenate([tiny_model.reference_output(x[None]) for x in group])
                  for group in held_out]
    simulation = Simulation(tiny_imported.mod, plan, held_out, references)
    policy = policy_for(load_device("host").tvm_target())
    names = set(simulation.names)

    def int8_module(int8_layers: set[str]) -> float:
        run = compile_for_host(apply_int8(tiny_imported.mod, plan, policy,
                                          frozenset(names - int8_layers)))
        return min(sqnr_db(reference, np.concatenate([run(x[None])[0] for x in group]))
                   for group, reference in zip(held_out, references, strict=True))

    for chosen in ({"conv2d_1"}, names):
        assert simulation.worst_sqnr(chosen) == pytest.approx(int8_module(chosen), abs=0.05)
    assert simulation.worst_sqnr(names) < simulation.worst_sqnr({"conv2d_1"}) < 80
    assert simulation.worst_sqnr(set()) > 100  # all float: the framework's outputs


def test_fp16_is_refused_where_the_cpu_has_none(tiny_model, tiny_imported):
    with pytest.raises(UserError, match="arm-a53.*no fp16 arithmetic"):
        quantize(tiny_imported, tiny_model, load_device("arm-a53"),
                 QuantizeOptions(variant=Variant.FP16))


def test_calibration_data_sources_and_their_errors(tmp_path):
    builtin = load_dataset("builtin", (1, 3, 32, 32), 4, 0)
    assert builtin.inputs.shape == (4, 3, 32, 32) and builtin.labels is None
    assert load_dataset("builtin", (1, 3, 32, 32), 4, 0).sha256 == builtin.sha256
    assert load_dataset("builtin", (1, 3, 32, 32), 4, 1).sha256 != builtin.sha256
    from skimage import data, io

    (tmp_path / "images").mkdir()
    io.imsave(tmp_path / "images" / "cat.png", data.chelsea())
    folder = load_dataset(str(tmp_path / "images"), (1, 3, 16, 16), 8, 0)
    assert folder.inputs.shape == (1, 3, 16, 16)
    np.savez(tmp_path / "d.npz", inputs=np.zeros((3, 1, 8, 8), "float32"), labels=[1, 2, 3])
    assert list(load_dataset(str(tmp_path / "d.npz"), (1, 1, 8, 8), 10, 0).labels) == [1, 2, 3]
    np.save(tmp_path / "bad.npy", np.zeros((3, 8, 8), "float32"))
    with pytest.raises(UserError, match="N x \\[1, 8, 8\\]"):
        load_dataset(str(tmp_path / "bad.npy"), (1, 1, 8, 8), 10, 0)
    with pytest.raises(UserError, match="image model"):
        load_dataset("builtin", (1, 64), 4, 0)


# What int8 may lose on data calibration's preprocessing never made, against crops made the way
# calibration makes them (other crops of the same photos).
SHIFT_MARGIN_POINTS = 2.0
SHIFTED_SQNR_FLOOR_DB = 40.0


def test_int8_holds_on_shifted_data(tiny_model, tiny_imported, host_device):
    quantized = quantize(tiny_imported, tiny_model, host_device,
                         QuantizeOptions(variant=Variant.INT8, calibration_count=32,
                                         eval_count=48))
    given, *shifted = quantized.evaluations
    assert len(shifted) == 3
    for report in shifted:
        assert report.top1_agreement >= given.top1_agreement - SHIFT_MARGIN_POINTS / 100, report
        assert report.sqnr_db >= SHIFTED_SQNR_FLOOR_DB, report
    # The fallback kept the layer the sensitivity named (the classifier, 42 dB alone against
    # 59-67 dB for the convolutions), not more.
    sensitivity = quantized.quantization.sensitivity
    assert quantized.quantization.float_layers == (min(sensitivity, key=sensitivity.get),)


def test_evaluation_data_is_shifted_away_from_calibration(tmp_path):
    shape = (1, 3, 32, 32)
    sets = evaluation_sets("builtin", shape, 12)
    again = evaluation_sets("builtin", shape, 12)
    assert [d.sha256 for d in sets] == [d.sha256 for d in again]  # reproducible
    assert len({d.sha256 for d in sets}) == 4
    assert all(d.inputs.shape == (12, 3, 32, 32) for d in sets)
    given, resized, _, photos = sets
    # The friendly set is what calibration's code makes (other crops of the same photos);
    # a bench draws yet other crops and shifts with its own seed.
    assert given.sha256 == load_dataset("builtin", shape, 12, 1).sha256
    assert evaluation_sets("builtin", shape, 12, seed=2)[1].sha256 != resized.sha256
    # Sensor noise and JPEG add high-frequency energy: at ImageNet's size (a downscale to 32
    # averages it away) the camera set's neighbouring pixels differ more than the resized set's.
    large = evaluation_sets("builtin", (1, 3, 224, 224), 8)
    roughness = [float(np.abs(np.diff(d.inputs, axis=-1)).mean()) for d in large]
    assert roughness[2] > 1.15 * roughness[1], roughness
    # Other photos: other content, so other statistics than the calibration photos'.
    assert abs(photos.inputs.mean() - given.inputs.mean()) > 0.2
    # A folder gets its own shifted copies; model inputs in a NumPy file cannot be shifted.
    from skimage import data, io

    (tmp_path / "images").mkdir()
    io.imsave(tmp_path / "images" / "cat.png", data.chelsea())
    folder = evaluation_sets(str(tmp_path / "images"), shape, 5)
    assert [d.spec.removeprefix(str(tmp_path / "images")) for d in folder] == [
        "", " (other-resize)", " (camera)"]
    assert [len(d) for d in folder] == [1, 5, 5]  # crops of the one image, once shifted
    np.save(tmp_path / "x.npy", np.zeros((3, 3, 32, 32), "float32"))
    assert len(evaluation_sets(str(tmp_path / "x.npy"), shape, 5)) == 1


@pytest.mark.slow
def test_digits_cnn_int8_artifact_within_one_point(tmp_path, host_device, host_farm):
    calibration, heldout = digits.write_data(tmp_path / "data")
    model = load_model("tests.digits:digits_cnn", (1, 1, 8, 8))
    options = QuantizeOptions(variant=Variant.INT8, calibration=str(calibration),
                              eval_data=str(heldout), eval_count=1000)
    result = run_job(JobSpec(host_device, model, 0, host_farm, tmp_path / "artifact",
                             tmp_path / "logs", options=options))
    manifest = read_manifest(result.artifact)
    report = manifest.accuracy
    assert manifest.variant is Variant.INT8 and report.eval_data.count == 540
    assert report.reference_accuracy > 0.95
    assert report.accuracy >= report.reference_accuracy - 0.01, report
    assert manifest.quantization.calibration.sha256 == load_dataset(
        str(calibration), (1, 1, 8, 8), 256, 0).sha256
    assert CALIBRATION_NAME in manifest.files
    assert manifest.verification.max_abs_error < 0.05 * 10
    # The recorded calibration rebuilds the same library without calibrating again.
    # (a PyTorch factory is code: named by the user, never imported from the manifest)
    with pytest.raises(UserError, match="cannot be loaded from the artifact alone"):
        rebuild(result.artifact)
    assert rebuild(result.artifact, model).identical


def test_cli_refuses_fp16_for_arm_a53_before_starting_anything(tmp_path, capsys):
    from pipeline.build import main

    code = main(["--device", "arm-a53", "--model", "tiny-cnn", "--quantize", "fp16",
                 "--out", str(tmp_path / "artifact"), "--logs", str(tmp_path / "logs")])
    assert code == 2
    assert "no fp16 arithmetic" in capsys.readouterr().err
    assert not (tmp_path / "artifact").exists()
