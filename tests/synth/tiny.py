"""A tiny BN classifier with made-up running statistics: synthesis tests in seconds."""

from __future__ import annotations

import copy

import torch
from torch import nn

from dfq.models.data_config import DataConfig


def tiny_model(num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, num_classes),
    )
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def tiny_config(num_classes: int = 4) -> DataConfig:
    return DataConfig(input_size=(3, 8, 8), num_classes=num_classes)


class MemoryStore:
    """A `RoundStore` in memory: rounds and states are deep-copied, as a file store would."""

    def __init__(self, rounds: dict | None = None) -> None:
        self.rounds: dict = dict(rounds or {})

    def load(self, r: int):
        saved = self.rounds.get(r)
        return None if saved is None else copy.deepcopy(saved)

    def save(self, r: int, result, state: dict) -> None:
        self.rounds[r] = copy.deepcopy((result, state))
