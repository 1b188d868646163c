"""The classic image-CNN architectures users bring, written small (seeded weights, narrow layers,
small inputs), and ONNX files of them as old zoo exporters and as current exporters wrote them.

Together they cover the operator set issue 16 names: Conv (groups, dilation, asymmetric
kernels), ConvTranspose, BatchNorm, ReLU/Clip/HardSigmoid/HardSwish/Sigmoid/SiLU/GELU/PReLU/
LeakyReLU, max/average/global pooling with ceil_mode and padding, LRN, Dropout, Concat/Split/
Slice, Reshape/Flatten/Transpose (channel shuffle), Gemm/MatMul, broadcasting Add/Mul
(squeeze-and-excitation), Resize/Upsample, Pad, Softmax, ReduceMean, Squeeze/Unsqueeze, and the
Shape/Gather/Constant arithmetic old exporters wrote around Reshape.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

INPUT_SHAPE = (1, 3, 32, 32)


class AlexNetStyle(nn.Module):
    """Large strided first kernel, LRN, grouped convolution, ceil-mode max pooling, a dropout
    classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
            nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0),
            nn.MaxPool2d(3, stride=2, ceil_mode=True),
            nn.Conv2d(16, 24, 3, padding=1, groups=2), nn.ReLU(),
            nn.MaxPool2d(3, stride=2, ceil_mode=True))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(24 * 4 * 4, 32), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class VGGStyle(nn.Module):
    """Stacks of 3x3 convolutions with batch norm, max pooling, a flatten and a dropout MLP."""

    def __init__(self):
        super().__init__()
        layers, width = [], 3
        for out, repeat in ((8, 1), (16, 2), (24, 2)):
            for _ in range(repeat):
                layers += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                width = out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Linear(24 * 4 * 4, 32), nn.ReLU(), nn.Dropout(),
                                        nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class _Fire(nn.Module):
    def __init__(self, width, squeeze, expand):
        super().__init__()
        self.squeeze = nn.Conv2d(width, squeeze, 1)
        self.expand1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.squeeze(x))
        return torch.cat([F.relu(self.expand1(x)), F.relu(self.expand3(x))], 1)


class SqueezeNetStyle(nn.Module):
    """Fire modules (squeeze, then 1x1 and 3x3 expands concatenated), ceil-mode pooling, a
    convolutional classifier ending in global pooling and softmax."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True),
            _Fire(16, 4, 8), _Fire(16, 4, 8), nn.MaxPool2d(3, 2, ceil_mode=True),
            _Fire(16, 8, 16))
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(32, 10, 1), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1))

    def forward(self, x):
        return F.softmax(torch.flatten(self.classifier(self.features(x)), 1), dim=1)


class _Inception(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.b1 = nn.Conv2d(width, 8, 1)
        self.b3 = nn.Sequential(nn.Conv2d(width, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1))
        self.b7 = nn.Sequential(nn.Conv2d(width, 4, 1), nn.ReLU(),
                                nn.Conv2d(4, 4, (1, 7), padding=(0, 3)), nn.ReLU(),
                                nn.Conv2d(4, 8, (7, 1), padding=(3, 0)))
        self.pool = nn.Sequential(nn.AvgPool2d(3, 1, padding=1, count_include_pad=False),
                                  nn.Conv2d(width, 8, 1))

    def forward(self, x):
        return F.relu(torch.cat([self.b1(x), self.b3(x), self.b7(x), self.pool(x)], 1))


class InceptionStyle(nn.Module):
    """Parallel branches (1x1, 3x3, factorized 1x7/7x1, average pool with padding) concatenated,
    batch norm, global average pooling."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1))
        self.mixed = nn.Sequential(_Inception(16), _Inception(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.mixed(self.stem(x)), 1)
        return self.fc(torch.flatten(x, 1))


class _Bottleneck(nn.Module):
    def __init__(self, width, mid, out, stride):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, stride, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(),
            nn.Conv2d(mid, out, 1, bias=False), nn.BatchNorm2d(out))
        self.shortcut = (nn.Identity() if stride == 1 and width == out else nn.Sequential(
            nn.Conv2d(width, out, 1, stride, bias=False), nn.BatchNorm2d(out)))

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class ResNet50Style(nn.Module):
    """Bottleneck residual blocks with projection shortcuts, a 7x7 stem and max pool."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.blocks = nn.Sequential(_Bottleneck(16, 8, 32, 1), _Bottleneck(32, 8, 32, 1),
                                    _Bottleneck(32, 16, 64, 2))
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _shuffle(x, groups):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _ShuffleUnit(nn.Module):
    def __init__(self, width):
        super().__init__()
        half = width // 2
        self.branch = nn.Sequential(
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False), nn.BatchNorm2d(half),
            nn.Conv2d(half, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())

    def forward(self, x):
        keep, work = x.chunk(2, dim=1)
        return _shuffle(torch.cat([keep, self.branch(work)], 1), 2)


class ShuffleNetStyle(nn.Module):
    """Channel split, depthwise convolution, concat and channel shuffle (reshape to 5-D,
    transpose, reshape back), then a mean over the spatial axes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.units = nn.Sequential(_ShuffleUnit(16), _ShuffleUnit(16))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.units(self.stem(x)).mean([2, 3]))


class _SqueezeExcite(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.reduce, self.expand = nn.Conv2d(width, width // 4, 1), nn.Conv2d(width // 4, width, 1)

    def forward(self, x):
        scale = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(scale))))


class MobileNetV3Style(nn.Module):
    """Hard-swish, ReLU6, depthwise separable blocks and squeeze-and-excitation (a broadcast
    multiply by a hard-sigmoid gate)."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
            _SqueezeExcite(16),
            nn.Conv2d(16, 24, 1, bias=False), nn.BatchNorm2d(24), nn.Hardswish(),
            nn.Conv2d(24, 24, 5, 2, 2, groups=24, bias=False), nn.BatchNorm2d(24), nn.Hardswish(),
            _SqueezeExcite(24))
        self.head = nn.Sequential(nn.Linear(24, 32), nn.Hardswish(), nn.Dropout(0.2),
                                  nn.Linear(32, 10))

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.body(x), 1), 1))


class DenseNetStyle(nn.Module):
    """Dense blocks (each layer's output concatenated onto its input), BN-ReLU-conv order,
    average-pool transitions."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.layers = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(8 + 4 * i), nn.ReLU(),
                          nn.Conv2d(8 + 4 * i, 4, 3, 1, 1, bias=False)) for i in range(3))
        self.transition = nn.Sequential(nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 12, 1),
                                        nn.AvgPool2d(2))
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        x = self.stem(x)
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        x = self.transition(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).squeeze(3).squeeze(2))


class SegmenterStyle(nn.Module):
    """An encoder-decoder: dilated convolutions, PReLU/LeakyReLU/SiLU/GELU/sigmoid, reflect
    replicate and constant padding, transposed convolution, nearest and bilinear resize, a skip
    connection, and a matmul head over the flattened pixels."""

    def __init__(self):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.PReLU(8))
        self.context = nn.Sequential(nn.ReflectionPad2d(2), nn.Conv2d(8, 8, 3, dilation=2),
                                     nn.LeakyReLU(0.1))
        self.gate = nn.Conv2d(8, 8, 1)
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.mix = nn.Conv2d(8 + 3, 6, 3)
        self.classes = nn.Parameter(torch.randn(6, 4))

    def forward(self, x):
        d = self.down(x)
        c = F.silu(self.context(d)) * torch.sigmoid(self.gate(d))
        up = (F.gelu(self.up(c)) + F.interpolate(c, scale_factor=2, mode="nearest")
              + F.interpolate(c, scale_factor=2, mode="bilinear", align_corners=False))
        mixed = self.mix(torch.cat([F.pad(up, (1, 1, 1, 1)),
                                    F.pad(x, (1, 1, 1, 1), mode="replicate")], 1))
        pixels = mixed.flatten(2).transpose(1, 2).unsqueeze(1)  # [1, 1, H*W, 6]
        return (pixels @ self.classes).mean(dim=2).squeeze(1)  # [1, 4]


ARCHITECTURES = {
    "alexnet": AlexNetStyle, "vgg": VGGStyle, "squeezenet": SqueezeNetStyle,
    "inception": InceptionStyle, "resnet50": ResNet50Style, "shufflenet": ShuffleNetStyle,
    "mobilenetv3": MobileNetV3Style, "densenet": DenseNetStyle, "segmenter": SegmenterStyle,
}


def build(name: str) -> nn.Module:
    """The architecture with seeded weights and batch-norm statistics that are not identity."""
    torch.manual_seed(0)
    module = ARCHITECTURES[name]()
    for sub in module.modules():
        if isinstance(sub, nn.BatchNorm2d):
            sub.running_mean.uniform_(-0.5, 0.5)
            sub.running_var.uniform_(0.5, 2.0)
            sub.weight.data.uniform_(0.5, 1.5)
            sub.bias.data.uniform_(-0.2, 0.2)
    return module.eval()


# Factories for `--model tests.classic_cnns:NAME` (PyTorch models given by factory).
def alexnet(): return build("alexnet")  # noqa: E704
def shufflenet(): return build("shufflenet")  # noqa: E704


CURRENT_OPSET = 20  # the newest the TorchScript exporter writes
OLD_OPSET = 9


class _LrnAsOneOperator(torch.autograd.Function):
    """Exported as ONNX's LRN operator, as Caffe-era files have it (torch's exporter would
    write the decomposition into pooling and powers)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return F.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class _OnnxLrn(nn.Module):
    def __init__(self, lrn: nn.LocalResponseNorm):
        super().__init__()
        self.args = (lrn.size, lrn.alpha, lrn.beta, lrn.k)

    def forward(self, x):
        return _LrnAsOneOperator.apply(x, *self.args)


def export_onnx(name: str, path: Path, opset: int) -> Path:
    """The architecture as ONNX. At an old opset, also as old zoo files were written: every
    weight listed as a graph input too, each Dropout kept with its mask output (opset-9
    exporters wrote it), and residual and branch sums written as the variadic Sum."""
    module = build(name)
    for parent, child_name, child in [(p, n, c) for p in module.modules()
                                      for n, c in p.named_children()]:
        if isinstance(child, nn.LocalResponseNorm):
            setattr(parent, child_name, _OnnxLrn(child))
    with warnings.catch_warnings():  # the exporter's notes on what it could not fold
        warnings.simplefilter("ignore", UserWarning)
        torch.onnx.export(module, (torch.zeros(INPUT_SHAPE),), str(path), input_names=["data"],
                          output_names=["prob"], opset_version=opset, dynamo=False,
                          keep_initializers_as_inputs=opset < 13, do_constant_folding=opset >= 13)
    if opset < 13:
        import onnx

        proto = onnx.load(str(path))
        _as_old_zoo_files(proto)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    return path


def _as_old_zoo_files(proto) -> None:
    from onnx import helper

    nodes = []
    for index, node in enumerate(proto.graph.node):
        if node.op_type == "Gemm":  # an inference-mode Dropout before each classifier layer
            dropped = f"{node.input[0]}_dropout{index}"
            nodes.append(helper.make_node("Dropout", [node.input[0]],
                                          [dropped, f"{dropped}_mask"], ratio=0.5))
            node.input[0] = dropped
        if node.op_type == "Add" and not _is_constant(proto, node.input[1]):
            node = helper.make_node("Sum", list(node.input), list(node.output), name=node.name)
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)


def _is_constant(proto, name: str) -> bool:
    return (name in {i.name for i in proto.graph.initializer}
            or any(n.op_type == "Constant" and name in n.output for n in proto.graph.node))


def random_input(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(INPUT_SHAPE).astype("float32")
