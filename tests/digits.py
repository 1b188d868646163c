"""A small CNN trained on scikit-learn's digits (8x8 grey images, 10 classes; ships offline).

`digits_cnn` is a PyTorch factory for `--model tests.digits:digits_cnn --input-shape 1,1,8,8`:
it trains the net (seeded, single-threaded: the same weights every time, so the model hash in a
manifest is stable and a rebuild can reproduce it) and returns it in eval mode.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import nn

HELD_OUT = 0.3  # share of the 1797 images kept for the accuracy figures


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 32, 3, groups=32, padding=1), nn.BatchNorm2d(32), nn.ReLU6(),
            nn.Conv2d(32, 64, 1), nn.BatchNorm2d(64), nn.ReLU6())
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def splits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train inputs, train labels, test inputs, test labels); inputs N,1,8,8 in [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype("float32") / 8.0 - 1.0)[:, None]
    y = digits.target.astype("int64")
    order = np.random.default_rng(0).permutation(len(x))
    cut = int(len(x) * (1 - HELD_OUT))
    train, test = order[:cut], order[cut:]
    return x[train], y[train], x[test], y[test]


@functools.cache
def _trained_state() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = DigitsCNN()
        x, y, _, _ = splits()
        inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
        optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
        batches = np.random.default_rng(1)
        for _ in range(30):
            for batch in np.array_split(batches.permutation(len(x)), len(x) // 64):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(net(inputs[batch]), labels[batch])
                loss.backward()
                optimizer.step()
        return {k: v.detach().clone() for k, v in net.state_dict().items()}
    finally:
        torch.set_num_threads(threads)


def digits_cnn() -> DigitsCNN:
    net = DigitsCNN()
    net.load_state_dict(_trained_state())
    return net.eval()


def write_data(folder: Path) -> tuple[Path, Path]:
    """calibration.npy (training inputs, no labels) and heldout.npz (inputs and labels)."""
    x_train, _, x_test, y_test = splits()
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "calibration.npy", x_train[:256])
    np.savez(folder / "heldout.npz", inputs=x_test, labels=y_test)
    return folder / "calibration.npy", folder / "heldout.npz"
