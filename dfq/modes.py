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


def autocast(dev: torch.device, amp: str = "auto"):
    """bfloat16 autocast on CUDA ('auto') or wherever asked ('bf16'). Losses, BN statistics and
    quantizer arithmetic stay float32 (the callers cast to float where it matters)."""
    enabled = amp == "bf16" or (amp == "auto" and dev.type == "cuda")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=enabled)


def memory_format(x: torch.Tensor) -> torch.memory_format:
    """channels_last on CUDA, where convolutions (cuDNN, tensor cores) run fastest in it."""
    return torch.channels_last if x.is_cuda and x.dim() == 4 else torch.contiguous_format


@contextmanager
def channels_last(*models: nn.Module) -> Iterator[None]:
    """Models in channels_last on CUDA (cuDNN's fastest layout), back to contiguous on exit."""
    cuda = [m for m in models if next((p.is_cuda for p in m.parameters()), False)]
    for m in cuda:
        m.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        for m in cuda:
            m.to(memory_format=torch.contiguous_format)
