"""A small inverted-residual network whose kernels are of the kinds EfficientNet-Lite0's logs
hold (a strided 3x3 stem, depthwise 3x3, 1x1 expand and project with ReLU6, a classifier), at
other widths and resolutions: what transfer tuning must carry schedules to."""

import torch
from torch import nn


class SmallMobile(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(24, 24, 3, 1, 1, groups=24), nn.ReLU6())
        self.project = nn.Conv2d(24, 16, 1)
        self.expand = nn.Sequential(nn.Conv2d(16, 96, 1), nn.ReLU6())
        self.classifier = nn.Linear(96, 10)

    def forward(self, x):
        x = self.project(self.depthwise(self.stem(x)))
        return self.classifier(self.expand(x).mean((2, 3)))


def small_mobile() -> nn.Module:
    torch.manual_seed(0)
    return SmallMobile().eval()
