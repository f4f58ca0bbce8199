"""The fake quantizer: uniform grid, zero point 0, learnable step size (LSQ), straight-through
rounding.

Zero point 0 everywhere keeps the exported graph on the integer kernels onnxruntime and TensorRT
fuse: signed tensors use a symmetric grid, non-negative ones (after ReLU) a grid starting at 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

MIN_SCALE = 1e-8


class _FakeQuant(torch.autograd.Function):
    """`clamp(round(x / s), qmin, qmax) * s` with LSQ's gradients, in few whole-tensor passes.

    LSQ's gradients (Esser et al., rounding of the clipped `v = x / s`): d/dx is 1 where
    `qmin <= v <= qmax` and 0 elsewhere; d/ds is `round(v) - v` there and the bound `v` is clipped
    to elsewhere, times `factor`. Written out, the forward pass is four tensor operations (three in
    place) instead of the eight of autograd through `clamp(round_ste(x / s)) * s`, and the backward
    recomputes `v` from `x` instead of keeping it. A W4A4 EfficientNet-Lite0 training step (batch
    32, 2 CPU cores) took 9.0 s through autograd, 81% of it in the quantizers, and takes 4.0 s with
    this function (`tools/bench_fake_quant.py`); on a GPU each operation is a kernel launch.
    """

    @staticmethod
    def forward(ctx, x, s, qmin, qmax, factor):
        ctx.save_for_backward(x, s)
        ctx.grid = (qmin, qmax, factor)
        return torch.div(x, s).round_().clamp_(qmin, qmax).mul_(s)

    @staticmethod
    def backward(ctx, g):
        x, s = ctx.saved_tensors
        qmin, qmax, factor = ctx.grid
        v = x / s
        clipped = v.clamp(qmin, qmax)
        gx = g.masked_fill(clipped != v, 0.0)
        gs = None
        if ctx.needs_input_grad[1]:
            # sum of g * (round(clipped) - [v on the grid] * v), reduced to the step's shape
            code = clipped.round_()
            if s.numel() == 1:
                gs = torch.dot(g.reshape(-1), code.reshape(-1)) - torch.dot(
                    gx.reshape(-1), v.reshape(-1)
                )
            else:
                gs = (g * code - gx * v).flatten(1).sum(1)
            gs = gs.reshape(s.shape) * factor
        return (gx if ctx.needs_input_grad[0] else None), gs, None, None, None


def fake_quant(x: torch.Tensor, s: torch.Tensor, qmin: int, qmax: int, factor: float = 1.0):
    """`clamp(round(x / s), qmin, qmax) * s`, straight-through for `x`, LSQ for `s` (its
    gradient times `factor`); `s` is a scalar or, per channel, broadcasts along dim 0."""
    return _FakeQuant.apply(x, s, qmin, qmax, factor)


class Quantizer(nn.Module):
    """`clamp(round(x / s), qmin, qmax) * s`, per tensor or per channel along `channel_axis`.

    `drop_prob` > 0 (set only while reconstructing, see `reconstruct.qdrop`) passes a random share
    of elements through unquantized when gradients are on, QDrop's regularizer; it is 0 in every
    saved or evaluated model. (Not tied to `training`, so dropout / stochastic depth stay off
    meanwhile.)
    """

    def __init__(
        self, bits: int, signed: bool, channel_axis: int | None = None, num_channels: int = 1
    ) -> None:
        super().__init__()
        if not 2 <= int(bits) <= 16:
            raise ValueError(f"bits must be in 2..16, got {bits}")
        if channel_axis not in (None, 0):
            raise ValueError(f"channel_axis must be None (per tensor) or 0, got {channel_axis}")
        self.bits = int(bits)
        self.signed = bool(signed)
        self.channel_axis = channel_axis
        shape = (int(num_channels),) if channel_axis is not None else ()
        self.scale = nn.Parameter(torch.ones(shape))
        self.enabled = True
        self.drop_prob = 0.0

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    def step(self, like: torch.Tensor) -> torch.Tensor:
        """The step size broadcastable against `like` (positive even if the parameter strays)."""
        s = self.scale.clamp_min(MIN_SCALE)
        if self.channel_axis is None:
            return s
        return s.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def set_scale(self, scale: torch.Tensor | float) -> None:
        self.scale.copy_(
            torch.as_tensor(scale, dtype=self.scale.dtype)
            .clamp_min(MIN_SCALE)
            .expand_as(self.scale)
        )

    def integer(self, x: torch.Tensor) -> torch.Tensor:
        """The integer codes `clamp(round(x / s))`, as float (what an exporter stores)."""
        return torch.clamp(torch.round(x / self.step(x)), self.qmin, self.qmax)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        if x.dtype in (torch.bfloat16, torch.float16):
            x = x.float()  # the grid arithmetic in float32, also under bf16 autocast
        per_scale = x.numel() / max(1, self.scale.numel())
        factor = 1.0 / math.sqrt(per_scale * max(1, self.qmax))
        q = fake_quant(x, self.step(x), self.qmin, self.qmax, factor)
        if self.drop_prob > 0 and torch.is_grad_enabled():
            q = torch.where(torch.rand_like(x) < self.drop_prob, x, q)
        return q

    def extra_repr(self) -> str:
        axis = (
            "per tensor" if self.channel_axis is None else f"per channel (axis {self.channel_axis})"
        )
        return f"bits={self.bits}, {'signed' if self.signed else 'unsigned'}, {axis}"


def activation_quantizers(model: nn.Module) -> list[Quantizer]:
    """Every per-tensor quantizer of `model` (layer inputs and outputs, attached ones), once
    each."""
    return [m for m in model.modules() if isinstance(m, Quantizer) and m.channel_axis is None]


def all_quantizers(model: nn.Module) -> list[Quantizer]:
    return [m for m in model.modules() if isinstance(m, Quantizer)]


@contextmanager
def temporarily(quantizers: Iterable[Quantizer], attr: str, value: object) -> Iterator[None]:
    """Each of `quantizers` has `attr` set to `value` inside; the old values come back on exit."""
    qs = list(quantizers)
    old = [getattr(q, attr) for q in qs]
    for q in qs:
        setattr(q, attr, value)
    try:
        yield
    finally:
        for q, v in zip(qs, old, strict=True):
            setattr(q, attr, v)


def disabled(quantizers: Iterable[Quantizer]):
    """`quantizers` are the identity inside (a context manager); restored on exit."""
    return temporarily(quantizers, "enabled", False)
