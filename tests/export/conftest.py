"""A tiny residual CNN, fake-quantized with dfq.quant, for export tests that run in seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dfq.models.data_config import DataConfig

DATA = DataConfig(
    input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_classes=5
)


class TinyResNet(nn.Module):
    """Stem, one residual block (the conv before the Add needs an output quantizer), a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(x + y)
        x = torch.relu(self.down(x))
        return self.head(x.mean((2, 3)))


def tiny_quantized(
    bits: int, seed: int = 0, net: type[nn.Module] | None = None
) -> tuple[nn.Module, torch.Tensor]:
    """A W{bits}A{bits} TinyResNet (or `net`; first/last layer 8 bit) and its calibration images."""
    from dfq.quant.insert import prepare
    from dfq.quant.layers import quant_layers
    from dfq.quant.quant_config import QuantConfig

    torch.manual_seed(seed)
    model = (net or TinyResNet)().eval()
    for m in model.modules():  # non-trivial BN statistics, so folding matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.3)
    calib = torch.randn(64, *DATA.input_size)
    prepare(model, QuantConfig(wbits=bits, abits=bits), [calib[:32], calib[32:]])
    for layer in quant_layers(model).values():
        layer.bake()
    return model, calib


@pytest.fixture(scope="module")
def w4a4():
    return tiny_quantized(4)


@pytest.fixture(scope="module")
def w8a8():
    return tiny_quantized(8)


class Block(nn.Module):
    """A torchvision-style basic block: its shortcut adds the block's input."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(self.conv1(x)))


class TinyBlockNet(nn.Module):
    """Stem, two residual blocks as submodules, a head: the exporter sees block scopes."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1, self.block2 = Block(8), Block(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.block1(self.stem(x))).mean((2, 3)))


class InvertedResidual(nn.Module):
    """A MobileNetV2-style block: 1x1 expansion and 3x3 depthwise conv, each with ReLU6, a linear
    1x1 projection, and a shortcut adding the block's input."""

    def __init__(self, c: int, expand: int = 2) -> None:
        super().__init__()
        e = c * expand
        self.conv_pw = nn.Sequential(nn.Conv2d(c, e, 1), nn.BatchNorm2d(e), nn.ReLU6())
        self.conv_dw = nn.Sequential(
            nn.Conv2d(e, e, 3, padding=1, groups=e), nn.BatchNorm2d(e), nn.ReLU6()
        )
        self.conv_pwl = nn.Sequential(nn.Conv2d(e, c, 1), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_pwl(self.conv_dw(self.conv_pw(x)))


class TinyMobileNet(nn.Module):
    """Stem and head with ReLU6 (the head's feeds the pooling), one inverted residual block."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = InvertedResidual(8)
        self.head = nn.Sequential(nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU6())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.block(self.stem(x))).mean((2, 3)))
