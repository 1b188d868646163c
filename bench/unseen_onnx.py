"""ONNX files the project has never seen, for bench/transfer.py: ImageNet-sized architectures
with no tuning logs (and no zoo entry), written with seeded weights (no download; latency does
not depend on the weights' values).

    python bench/unseen_onnx.py DIR
    python bench/transfer.py --models DIR/squeezenet1_1.onnx,DIR/shufflenet_v2_x1_0.onnx

SqueezeNet 1.1 (Iandola et al. 2016; fire modules: a 1x1 squeeze, then 1x1 and 3x3 expands
concatenated, a convolutional classifier) and ShuffleNet V2 1.0x (Ma et al. 2018; channel split,
depthwise 3x3, channel shuffle; stages of 116/232/464 channels, 4/8/4 units), both at 224x224,
exported by torch.onnx (opset 17) in eval mode.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _models():
    import torch
    from torch import nn

    class Fire(nn.Module):
        def __init__(self, width: int, squeeze: int, expand: int):
            super().__init__()
            self.squeeze = nn.Sequential(nn.Conv2d(width, squeeze, 1), nn.ReLU())
            self.expand1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
            self.expand3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

        def forward(self, x):
            x = self.squeeze(x)
            return torch.cat([self.expand1(x), self.expand3(x)], 1)

    def pool():
        return nn.MaxPool2d(3, 2, ceil_mode=True)

    squeezenet = nn.Sequential(
        nn.Conv2d(3, 64, 3, stride=2), nn.ReLU(), pool(),
        Fire(64, 16, 64), Fire(128, 16, 64), pool(),
        Fire(128, 32, 128), Fire(256, 32, 128), pool(),
        Fire(256, 48, 192), Fire(384, 48, 192), Fire(384, 64, 256), Fire(512, 64, 256),
        nn.Dropout(0.5), nn.Conv2d(512, 1000, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten())

    def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
                relu: bool = True):
        layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, *([nn.ReLU()] if relu else []))

    class ShuffleUnit(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int):
            super().__init__()
            self.stride, half = stride, cout // 2
            inner = cin if stride > 1 else half
            if stride > 1:
                self.branch1 = nn.Sequential(conv_bn(cin, cin, 3, stride, cin, relu=False),
                                             conv_bn(cin, half, 1))
            self.branch2 = nn.Sequential(conv_bn(inner, half, 1),
                                         conv_bn(half, half, 3, stride, half, relu=False),
                                         conv_bn(half, half, 1))

        def forward(self, x):
            if self.stride == 1:
                keep, x = x.chunk(2, dim=1)
                out = torch.cat([keep, self.branch2(x)], 1)
            else:
                out = torch.cat([self.branch1(x), self.branch2(x)], 1)
            n, c, h, w = out.shape
            return out.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)

    class ShuffleNetV2(nn.Module):
        def __init__(self):
            super().__init__()
            units, width = [], 24
            for cout, repeats in [(116, 4), (232, 8), (464, 4)]:
                units += [ShuffleUnit(width, cout, 2)]
                units += [ShuffleUnit(cout, cout, 1) for _ in range(repeats - 1)]
                width = cout
            self.features = nn.Sequential(conv_bn(3, 24, 3, 2), nn.MaxPool2d(3, 2, 1), *units,
                                          conv_bn(464, 1024, 1))
            self.fc = nn.Linear(1024, 1000)

        def forward(self, x):
            return self.fc(self.features(x).mean([2, 3]))

    return {"squeezenet1_1": squeezenet, "shufflenet_v2_x1_0": ShuffleNetV2()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the .onnx files")
    args = parser.parse_args(argv)
    import torch

    args.folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    for name, module in _models().items():
        path = args.folder / f"{name}.onnx"
        torch.onnx.export(module.eval(), (torch.zeros(1, 3, 224, 224),), str(path),
                          input_names=["input"], dynamo=False, opset_version=17)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
