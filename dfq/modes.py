"""Modes as context managers that always restore what they changed (STYLE: no global flags)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def frozen(model: nn.Module | None, device: torch.device) -> Iterator[None]:
    """Eval mode, no parameter gradients, on `device` (channels_last on CUDA); restored on exit."""
    if model is None:
        yield
        return
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    home = next((p.device for p in model.parameters()), device)
    model.eval().requires_grad_(False).to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(home, memory_format=torch.contiguous_format).train(was_training)
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def trainable(params: list[nn.Parameter]) -> Iterator[None]:
    """Only `params` require gradients inside (the rest of the model frozen); restored on exit."""
    flags = {p: p.requires_grad for p in params}
    try:
        for p in params:
            p.requires_grad_(True)
        yield
    finally:
        for p, f in flags.items():
            p.requires_grad_(f)
