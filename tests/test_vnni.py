"""int8 on x86 (AVX-512 VNNI and AVX2): the packed weight layouts, the exact zero-point offset of
signed inputs, and tuning that really tensorizes with our intrinsics (vpdpbusd / vpmaddwd in the
library's machine code) and computes exactly."""

import subprocess

import numpy as np
import pytest

from pipeline.artifact.manifest import CALIBRATION_NAME
from pipeline.artifact.tuning_logs import logged_quantization
from pipeline.base.devices import load_device
from pipeline.base.variant import Variant
from pipeline.compile.host import compile_for_host
from pipeline.compile.packing import pack_weights
from pipeline.compile.x86.intrinsic import AVX2, VNNI, dot_product_for
from pipeline.frontend.importer import import_model
from pipeline.job.build_job import JobSpec, run_job
from pipeline.quantization.plan import Int8Plan, Layer, TensorRange, plan_from_json
from pipeline.quantization.policy import VNNI as VNNI_POLICY
from pipeline.quantization.policy import policy_for
from pipeline.quantization.rewrite import apply_int8
from pipeline.quantization.stage import QuantizeOptions
from tests.pointwise import int8_reference, one_pointwise_layer


def test_packed_weights_hold_16_outputs_by_4_inputs_contiguous():
    rng = np.random.default_rng(0)
    weight = rng.integers(-127, 128, (8, 24), dtype=np.int8)  # K=8 inputs, N=24 outputs
    packed = pack_weights(weight, VNNI)
    assert packed.shape == (2, 2, 16, 4) and packed.flags.c_contiguous
    assert packed.dtype == np.int8
    for k in range(8):
        for n in range(24):
            assert packed[n // 16, k // 4, n % 16, k % 4] == weight[k, n]
    assert not packed[1, :, 8:, :].any()  # outputs 24..31 are padding


def test_avx2_packed_weights_hold_8_outputs_by_2_inputs_widened_to_int16():
    weight = np.random.default_rng(0).integers(-127, 128, (6, 12), dtype=np.int8)
    packed = pack_weights(weight, AVX2)
    assert packed.shape == (2, 3, 8, 2) and packed.dtype == np.int16
    for k in range(6):
        for n in range(12):
            assert packed[n // 8, k // 2, n % 8, k % 2] == weight[k, n]
    assert not packed[1, :, 4:, :].any()


@pytest.mark.parametrize("device, dot", [("x86-avx512", VNNI), ("x86-nuc", AVX2),
                                         ("arm-a53", None)])
def test_each_class_gets_the_dot_product_its_instructions_have(device, dot):
    assert dot_product_for(load_device(device).tvm_target()) is dot


@pytest.mark.parametrize("op", ["conv2d", "matmul"])
def test_signed_input_of_a_pointwise_layer_computes_exactly_as_symmetric_int8(op):
    """Stored as uint8 + 128, minus 128 x the weight sums (folded into the float shift): the
    same result as int8 x int8, up to float rounding."""
    mod, weight, shape = one_pointwise_layer(op)
    x = np.random.default_rng(2).standard_normal([int(d) for d in shape]).astype("float32")
    threshold = 2.5
    plan = Int8Plan(layers=(Layer(f"{op}_0", 0, unsigned=False),),
                         ranges=(TensorRange(float(np.abs(x).max()), threshold, 0.0),),
                         method="minmax")
    quantized = apply_int8(mod, plan, VNNI_POLICY)
    text = quantized.script()
    assert '"uint8"' in text  # the offset form, not plain int8
    got = compile_for_host(quantized)(x)[0]

    x_scale = np.float32(threshold / 127)
    q = np.clip(np.round(x * (np.float32(1) / x_scale)), -127, 127).astype(np.int64)
    expected, _ = int8_reference(op, q, weight, x_scale)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_depthwise_int8_sum_in_float32_lanes_is_exact():
    """5x5 depthwise over uint8 at the extremes (255 x -127 in every tap, stride 2, padding):
    the float32 sum the x86 kernel computes equals numpy's int64 sum."""
    import tvm
    from tvm import relax

    from pipeline.base.devices import detect_host_target
    from pipeline.compile.lowering import lower

    rng = np.random.default_rng(3)
    channels, size = 24, 9
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, size, size, channels), "uint8"))
    weight = rng.integers(-127, 128, (5, 5, 1, channels)).astype("int8")
    weight[..., 0] = -127
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.nn.conv2d(
                x, relax.const(weight), strides=2, padding=2, groups=channels,
                data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32"))
        builder.emit_func_output(out)
    mod = builder.get()
    target = tvm.target.Target(detect_host_target())
    assert "conv2d_depthwise_8bit" in lower(mod, target).script()
    data = rng.integers(0, 256, (1, size, size, channels)).astype("uint8")
    data[..., 0] = 255
    got = compile_for_host(mod)(data)[0]

    padded = np.pad(data.astype(np.int64), ((0, 0), (2, 2), (2, 2), (0, 0)))
    expected = np.zeros(got.shape, np.int64)
    for r in range(5):
        for s in range(5):
            expected += padded[:, r:r + 2 * got.shape[1]:2, s:s + 2 * got.shape[2]:2, :] \
                * weight[r, s, 0].astype(np.int64)
    assert got.dtype == np.int32 and expected[..., 0].min() < -2 ** 19
    np.testing.assert_array_equal(got, expected)


INSTRUCTION = {VNNI: "vpdpbusd", AVX2: "vpmaddwd"}


@pytest.mark.slow
def test_tuned_host_int8_library_runs_its_cpus_dot_products(tmp_path, tiny_model, host_device,
                                                            host_farm, caplog):
    """A short tuning run: its int8 kernels tensorize with our intrinsic for this CPU (VNNI's
    vpdpbusd, else AVX2's vpmaddwd), build, and verify; the logs say which layers they were
    tuned with in float and which calibration, and a build from them that names none uses
    both, calibrating nothing."""
    options = QuantizeOptions(variant=Variant.INT8, calibration_count=8, eval_count=16,
                              max_drop_points=20.0, keep_float=frozenset({"conv2d_0"}))
    result = run_job(JobSpec(host_device, tiny_model, 40, host_farm, tmp_path / "artifact",
                     tmp_path / "logs", options=options))
    assert result.manifest.verification.top1_matches_framework
    disassembly = subprocess.run(["objdump", "-d", str(result.artifact / "lib.so")],
                                 capture_output=True, text=True, check=True).stdout
    assert INSTRUCTION[dot_product_for(host_device.tvm_target())] in disassembly
    logs = next((tmp_path / "logs").glob("*/tiny-cnn-int8"))
    logged = logged_quantization(logs)
    assert (logged.float_layers, logged.max_drop_points) == (("conv2d_0",), 20.0)
    calibration = result.manifest.quantization.calibration
    assert logged.calibration.data == calibration and logged.calibration.eval_data == "builtin"
    assert logged.calibration.sensitivity == result.manifest.quantization.sensitivity
    assert logged.calibration.plan == (result.artifact / CALIBRATION_NAME).read_text()
    assert {"tuning_logs/quantization.json", "tuning_logs/calibration.json"} <= set(
        result.manifest.files)

    caplog.set_level("INFO", logger="pipeline")
    caplog.clear()
    rebuilt = run_job(JobSpec(host_device, tiny_model, 0, None, tmp_path / "again",
                              tmp_path / "logs", verify=False, options=QuantizeOptions(
                                  variant=Variant.INT8, calibration_count=8, eval_count=16)))
    manifest = rebuilt.manifest
    assert "calibrating" not in caplog.text and "sensitivity of" not in caplog.text
    assert (rebuilt.artifact / CALIBRATION_NAME).read_bytes() == (
        result.artifact / CALIBRATION_NAME).read_bytes()
    assert manifest.quantization == result.manifest.quantization
    assert manifest.quantization.float_layers == ("conv2d_0",)
    assert manifest.accuracy.max_drop_points == 20.0
    # the same kernels as the tuned build: those the logs hold records of are found again
    assert manifest.tuning.kernels == result.manifest.tuning.kernels
    assert manifest.tuning.tuned_kernels > 0

    # The accuracy is measured on those kernels too (the int8 model as the artifact computes
    # it), and on the same figures as the untuned model up to float rounding.
    imported = import_model(tiny_model)
    plan = plan_from_json((rebuilt.artifact / CALIBRATION_NAME).read_text(), "calibration")
    mod = apply_int8(imported.mod, plan, policy_for(host_device.tvm_target()),
                     frozenset({"conv2d_0"}))
    tuned, untuned = compile_for_host(mod, logs), compile_for_host(mod)
    assert (tuned.tuned_kernels, tuned.workers) == (manifest.tuning.tuned_kernels, 1)
    assert untuned.tuned_kernels == 0
    x = tiny_model.sample_input()
    np.testing.assert_allclose(tuned(x)[0], untuned(x)[0], rtol=0, atol=0.05 * np.abs(
        untuned(x)[0]).max())


@pytest.mark.slow
def test_tuned_x86_nuc_int8_library_runs_avx2_dot_products_exactly(tmp_path, tiny_model):
    """The AVX2 class: int8 matmuls tensorized with vpmaddwd, and the library's output equal to
    the int8 model's on this machine (exact integer sums: the board's error is 0)."""
    from pipeline.farm.local import local_farm

    nuc = load_device("x86-nuc")
    options = QuantizeOptions(variant=Variant.INT8, calibration_count=8, eval_count=16,
                              max_drop_points=20.0)
    with local_farm(nuc) as farm:
        result = run_job(JobSpec(nuc, tiny_model, 40, farm.address, tmp_path / "artifact",
                         tmp_path / "logs", options=options))
    verification = result.manifest.verification
    assert verification.top1_matches_framework and verification.max_abs_error == 0.0
    disassembly = subprocess.run(["objdump", "-d", str(result.artifact / "lib.so")],
                                 capture_output=True, text=True, check=True).stdout
    assert "vpmaddwd" in disassembly and "zmm" not in disassembly
