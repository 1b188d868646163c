"""int8 on aarch64 without the dot-product extension: the weight layout NEON's widening
multiplies read, the class's choice of it, and the int8 - 128 form of unsigned pointwise inputs
that keeps every pair of int16 products exact. (The tuned library's machine code and its exact
result on a modeled board: tests/test_quantize_boards.py.)"""

import numpy as np
import pytest

from pipeline.base.devices import load_device
from pipeline.compile.aarch64.intrinsic import NEON
from pipeline.compile.extensions import AARCH64_NEON, GENERIC, X86_AVX2, extensions_for
from pipeline.compile.host import compile_for_host
from pipeline.compile.packing import pack_weights
from pipeline.quantization.plan import Int8Plan, Layer, TensorRange
from pipeline.quantization.policy import NEON as NEON_POLICY
from pipeline.quantization.policy import SIGNED, policy_for
from pipeline.quantization.rewrite import apply_int8
from tests.pointwise import int8_reference, one_pointwise_layer


def test_packed_weights_hold_each_run_of_two_inputs_for_four_outputs_in_eight_bytes():
    weight = np.random.default_rng(0).integers(-127, 128, (8, 6), dtype=np.int8)  # K=8, N=6
    packed = pack_weights(weight, NEON)
    assert packed.shape == (2, 4, 4, 2) and packed.dtype == np.int8
    for k in range(8):
        for n in range(6):
            assert packed[n // 4, k // 2, n % 4, k % 2] == weight[k, n]
    assert not packed[1, :, 2:, :].any()  # outputs 6 and 7 are padding
    # what one smull reads: inputs 2j, 2j+1 of outputs 0..3, adjacent
    flat = packed.reshape(-1)
    assert list(flat[8:16]) == [weight[k, n] for n in range(4) for k in (2, 3)]


@pytest.mark.parametrize("device, extensions, policy", [
    ("arm-a53", AARCH64_NEON, NEON_POLICY), ("rpi4", AARCH64_NEON, NEON_POLICY),
    ("x86-nuc", X86_AVX2, SIGNED)])
def test_each_arm_class_gets_neon_int8_and_its_policy(device, extensions, policy):
    target = load_device(device).tvm_target()
    assert extensions_for(target) is extensions and policy_for(target) is policy


def test_an_aarch64_target_without_neon_gets_the_generic_rules():
    import tvm

    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                "mattr": ["-neon"]})
    assert extensions_for(target) is GENERIC and policy_for(target) is SIGNED


@pytest.mark.parametrize("op", ["conv2d", "matmul"])
def test_unsigned_input_of_a_pointwise_layer_stored_as_int8_minus_128_computes_exactly(op):
    """A ReLU output (0..255) at a 1x1 convolution or matmul is stored as int8 = uint8 - 128
    (-128..127); 128 x the weight sums come back in the float shift: the same result as
    uint8 x int8, up to float rounding. With weights in [-127, 127], two products sum to at most
    2 x 128 x 127 = 32512 in magnitude: the int16 pairs NEON's smlal forms never wrap."""
    mod, weight, shape = one_pointwise_layer(op, after_relu=True)
    rng = np.random.default_rng(2)
    x = rng.standard_normal([int(d) for d in shape]).astype("float32")
    x.reshape(-1)[:3] = [0.0, 10.0, 2.5]  # both ends of the grid, and past its top
    threshold = 2.5
    plan = Int8Plan(layers=(Layer(f"{op}_0", 0, unsigned=True),),
                    ranges=(TensorRange(float(x.max()), threshold, 0.0),), method="minmax")
    quantized = apply_int8(mod, plan, NEON_POLICY)
    text = quantized.script()
    assert '"uint8"' not in text and "-128" in text
    got = compile_for_host(quantized)(x)[0]

    x_scale = np.float32(threshold / 255)
    q = np.clip(np.round(np.maximum(x, 0) * (np.float32(1) / x_scale)), 0, 255).astype(np.int64)
    expected, w_int8 = int8_reference(op, q, weight, x_scale)
    assert np.abs(w_int8).max() <= 127
    stored = q - 128
    assert stored.min() == -128 and stored.max() == 127
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
