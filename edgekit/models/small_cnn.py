"""Small CNNs for single-channel images (scikit-learn's digits, Fashion-MNIST), trained in seconds to minutes."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """(Conv3×3-BN-ReLU) per width → global average pool → linear.

    The default (16, 32, 32) with strides (1, 2, 1) has about 10k parameters (8×8 digits).
    """

    def __init__(
        self,
        num_classes: int = 10,
        widths: tuple[int, ...] = (16, 32, 32),
        strides: tuple[int, ...] = (1, 2, 1),
    ):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for width, stride in zip(widths, strides, strict=True):
            layers += [nn.Conv2d(channels, width, 3, padding=1, stride=stride), nn.BatchNorm2d(width), nn.ReLU()]
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def fashion_cnn(num_classes: int = 10) -> SmallCNN:
    """A wider SmallCNN for 28×28 Fashion-MNIST (about 0.4 M parameters, 36 M MACs)."""
    return SmallCNN(num_classes, widths=(32, 64, 128, 128, 256), strides=(1, 2, 1, 2, 1))


def train_small_cnn(
    x: torch.Tensor, y: torch.Tensor, epochs: int = 30, seed: int = 0, model: SmallCNN | None = None
) -> SmallCNN:
    """Train ``model`` (default: a ``SmallCNN``) on labelled images ``x`` (N, 1, H, W) with Adam; eval mode."""
    torch.manual_seed(seed)
    model = model or SmallCNN(int(y.max()) + 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


class FlatCNN(nn.Module):
    """(Conv3×3-BN-ReLU-MaxPool2) ×2 → flatten → linear, for 8×8 digits: only layers an FPGA flow (hls4ml) maps,
    small enough for a fully parallel design (about 1.9k parameters)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int] = (8, 16)):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, widths[0], 3, padding=1),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1),
            nn.BatchNorm2d(widths[1]),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flatten = nn.Flatten()
        self.head = nn.Linear(widths[1] * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.flatten(self.features(x)))
