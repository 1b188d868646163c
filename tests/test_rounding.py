"""Compensated rounding of int8 weights (GPTQ): the patch moments it rounds against, checked
against PyTorch's unfold, and the output error it saves over nearest rounding."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.quantization import rounding
from pipeline.quantization.rounding import Geometry


def _unfold_moment(x: np.ndarray, geometry: Geometry, channels: int) -> np.ndarray:
    top, left, bottom, right = geometry.padding
    padded = F.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    patches = F.unfold(padded, geometry.kernel, dilation=geometry.dilation,
                       stride=geometry.strides)[0]  # (C*kh*kw, P)
    if geometry.kind == "depthwise":
        per_channel = patches.reshape(channels, -1, patches.shape[-1])
        return torch.einsum("ckp,cjp->ckj", per_channel, per_channel).numpy()
    return (patches @ patches.T).numpy()


@pytest.mark.parametrize("geometry", [
    Geometry("conv", (3, 3), (2, 2), (0, 0, 1, 1), (1, 1)),  # TensorFlow's SAME at stride 2
    Geometry("conv", (3, 2), (1, 2), (1, 2, 0, 1), (2, 1)),
    Geometry("depthwise", (5, 5), (2, 2), (1, 1, 2, 2), (1, 1)),
    Geometry("depthwise", (3, 3), (1, 1), (2, 1, 2, 1), (2, 1)),
    Geometry("pointwise"),
])
def test_patch_moments_match_pytorch_unfold(geometry):
    x = np.random.default_rng(0).standard_normal((1, 4, 11, 9)).astype("float32")
    expected = _unfold_moment(x, geometry, 4)
    np.testing.assert_allclose(rounding.patch_moment(x, geometry), expected, rtol=1e-10)


def test_matmul_moment_sums_over_rows():
    x = np.random.default_rng(1).standard_normal((3, 5, 7))
    rows = x.reshape(-1, 7)
    np.testing.assert_allclose(rounding.patch_moment(x, Geometry("matmul")), rows.T @ rows)


def _output_error(weight, quantized, scale, moment):
    error = weight - quantized.astype("float64") * scale[:, None]
    return float(np.einsum("ri,ij,rj->", error, moment, error))


def test_gptq_lowers_the_output_error_on_correlated_inputs():
    rng = np.random.default_rng(2)
    # Patches of a smooth signal (neighbours correlate at 0.9), as images are.
    columns = 16
    moment = 0.9 ** np.abs(np.subtract.outer(np.arange(columns), np.arange(columns)))
    weight = rng.standard_normal((32, columns))
    scale = np.abs(weight).max(axis=1) / 127
    nearest = np.clip(np.round(weight / scale[:, None]), -127, 127)
    compensated = rounding.gptq(weight, scale, moment)
    assert compensated.dtype == np.int8
    # Each weight stays close to its value; the output error (what the layer computes) falls.
    assert np.abs(compensated - weight / scale[:, None]).max() < 3
    ratio = (_output_error(weight, compensated, scale, moment)
             / _output_error(weight, nearest, scale, moment))
    assert ratio < 0.5, ratio


def test_gptq_is_nearest_rounding_when_inputs_are_uncorrelated():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 3, 10))  # three groups, as depthwise filters are rounded
    scale = np.abs(weight).max(axis=2) / 127
    compensated = rounding.gptq(weight, scale, np.stack([np.eye(10) * 4.0] * 8))
    np.testing.assert_array_equal(compensated, np.round(weight / scale[..., None]))


def test_offsets_survive_the_record_and_a_wrong_shape_is_refused():
    offsets = np.random.default_rng(4).integers(-200, 200, (6, 1, 3, 3)).astype("int16")
    text = rounding.encode(offsets)
    np.testing.assert_array_equal(rounding.decode(text, offsets.shape), offsets)
    with pytest.raises(ValueError, match="54 rounding offsets"):
        rounding.decode(text, (6, 1, 5, 5))
