"""Differentiable augmentation, so synthetic images match BN statistics under many views, not one.

`jitter_flip` shifts the batch by a random offset (circularly, as DeepInversion does) and flips it
half the time; gradients flow back to the images. `swing` (Genie) shifts the input of every stride-2
convolution by a random pixel, so the images do not over-fit one sampling grid.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn


def jitter_flip(x: torch.Tensor, max_shift: int, flip: bool, rng: random.Random) -> torch.Tensor:
    """A randomly shifted (up to `max_shift` pixels each way) and possibly mirrored view of `x`."""
    if max_shift > 0:
        dx, dy = rng.randint(-max_shift, max_shift), rng.randint(-max_shift, max_shift)
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    if flip and rng.random() < 0.5:
        x = torch.flip(x, dims=(3,))
    return x


def swing_shift(x: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Pad one pixel (reflect) and crop back at a random offset: a one-pixel swing of the grid."""
    h, w = x.shape[-2:]
    if h < 2 or w < 2:
        return x
    i, j = rng.randint(0, 2), rng.randint(0, 2)
    return F.pad(x, (1, 1, 1, 1), mode="reflect")[:, :, i : i + h, j : j + w]


@contextmanager
def swing(model: nn.Module, rng: random.Random, enabled: bool = True) -> Iterator[None]:
    """While active, every stride-2 Conv2d sees a swung input; hooks are removed on exit."""
    handles = []
    if enabled:

        def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            return (swing_shift(inputs[0], rng),) + tuple(inputs[1:])

        for m in model.modules():
            if isinstance(m, nn.Conv2d) and tuple(m.stride) == (2, 2):
                handles.append(m.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
