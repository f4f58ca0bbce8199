"""Range initialization: where the quantization grid starts before any fine-tuning.

Weights: per output channel, the clipping value minimizing the squared rounding error (a grid search
over fractions of max |w|). Activations: per tensor, from a sample of each layer's inputs on the
calibration set, the clipping value minimizing the squared error (`mse`) or a percentile of |x|.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dfq.quant.quantizer import Quantizer

SAMPLE_PER_BATCH = 20_000
SAMPLE_MAX = 200_000


@dataclass
class InputStats:
    """What the observation pass learns about the input of one layer."""

    order: int
    shape: tuple[int, ...] = ()
    min: float = float("inf")
    max: float = float("-inf")
    samples: list[torch.Tensor] = field(default_factory=list)

    def add(self, x: torch.Tensor, gen: torch.Generator) -> None:
        self.shape = tuple(x.shape[1:])
        x = x.detach().float().flatten()
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))
        if sum(len(s) for s in self.samples) < SAMPLE_MAX:
            idx = torch.randint(0, x.numel(), (min(SAMPLE_PER_BATCH, x.numel()),), generator=gen)
            self.samples.append(x[idx.to(x.device)].cpu())

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples)


@torch.no_grad()
def observe(
    model: nn.Module,
    inputs: list[str],
    batches: list[torch.Tensor],
    outputs: list[str] = (),
    seed: int = 0,
) -> tuple[dict[str, InputStats], dict[str, InputStats]]:
    """Run `batches` through `model`; record the first inputs of modules `inputs` and the outputs
    of modules `outputs` (each with its call order). A module never called has no entry."""
    seen_in: dict[str, InputStats] = {}
    seen_out: dict[str, InputStats] = {}
    gen = torch.Generator().manual_seed(seed)
    counter = [0]
    handles = []

    def record(store: dict[str, InputStats], name: str, x: torch.Tensor) -> None:
        if name not in store:
            store[name] = InputStats(order=counter[0])
            counter[0] += 1
        store[name].add(x, gen)

    for name in inputs:  # prepended: before any quantizer attached to the module's input
        handles.append(
            model.get_submodule(name).register_forward_pre_hook(
                lambda _m, inp, name=name: record(seen_in, name, inp[0]), prepend=True
            )
        )
    for name in outputs:  # prepended: before any quantizer attached to the module's output
        handles.append(
            model.get_submodule(name).register_forward_hook(
                lambda _m, _inp, out, name=name: record(seen_out, name, out), prepend=True
            )
        )
    forward_all(model, batches, handles)
    return seen_in, seen_out


@torch.no_grad()
def forward_all(
    model: nn.Module, batches: list[torch.Tensor], handles: list[RemovableHandle]
) -> None:
    """Run every batch through `model` for what its hooks record; the hooks are removed after."""
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()


def _fake(x: torch.Tensor, scale: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale), qmin, qmax) * scale


def best_clip_fractions(
    x: torch.Tensor,
    amax: torch.Tensor,
    qmin: int,
    qmax: int,
    fracs: torch.Tensor,
    min_step: float = 0.0,
) -> torch.Tensor:
    """The clipping search of every range init: per row of `x` (rows, values), the fraction of
    `fracs` whose clipping point `amax[row] * frac` (its grid `[qmin, qmax]` times the step) gives
    the least squared error; the first one of `fracs` on ties."""
    best = torch.full_like(amax, float(fracs[0]))
    best_err = torch.full_like(amax, float("inf"))
    for frac in fracs:
        step = (amax * frac / qmax).clamp_min(min_step)
        err = (_fake(x, step[:, None], qmin, qmax) - x).pow(2).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, frac, best)
    return best


@torch.no_grad()
def init_weight_scale(q: Quantizer, w: torch.Tensor, method: str = "mse", steps: int = 80) -> None:
    """Per-channel clipping search on `w` (channel axis 0); `minmax` takes max |w| as it is."""
    flat = w.detach().flatten(1).float()
    amax = flat.abs().amax(dim=1).clamp_min(1e-8)
    best_scale = amax / q.qmax
    if method == "mse":
        fracs = torch.linspace(1.0, 0.2, steps)
        frac = best_clip_fractions(flat, amax, q.qmin, q.qmax, fracs, min_step=1e-8)
        best_scale = (amax * frac / q.qmax).clamp_min(1e-8)
    elif method != "minmax":
        raise ValueError(f"unknown weight init '{method}'")
    q.set_scale(best_scale.to(q.scale.dtype))


@torch.no_grad()
def init_act_scale(
    q: Quantizer,
    sample: torch.Tensor,
    method: str = "mse",
    percentile: float = 99.99,
    steps: int = 100,
) -> None:
    """Per-tensor step size from a sample of the tensor's values."""
    x = sample.float()
    amax = float(x.abs().max()) if q.signed else float(x.clamp_min(0).max())
    amax = max(amax, 1e-8)
    if method == "minmax":
        clip = amax
    elif method == "percentile":
        clip = float(torch.quantile(x.abs(), percentile / 100.0))
    elif method == "mse":
        fracs = torch.linspace(1.0, 0.05, steps)
        row = x.flatten()[None]
        clip = amax * float(best_clip_fractions(row, torch.tensor([amax]), q.qmin, q.qmax, fracs))
    else:
        raise ValueError(f"unknown activation init '{method}'")
    q.set_scale(max(clip, 1e-8) / q.qmax)
