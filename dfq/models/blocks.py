"""The block structure of a model, read from its module tree: shared by synthesis, quantization
and export, so none of them depends on how an exporter names graph nodes.

A *unit* is what block reconstruction optimizes at once and what a residual block is: a module
that is not a plain container (`Sequential`, `ModuleList`) and holds convolutions or linear layers,
or such a layer sitting directly in a container. *Stage outputs* are the units whose output is the
last one at each spatial resolution: the pooled features RGAL's relation loss compares.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

CONTAINERS = (nn.Sequential, nn.ModuleList)
LAYERS = (nn.Conv2d, nn.Linear)


def is_layer(module: nn.Module) -> bool:
    """A convolution or linear layer (quantized ones included: they subclass these)."""
    return isinstance(module, LAYERS)


def units(
    model: nn.Module, prefix: str = "", layer: Callable[[nn.Module], bool] = is_layer
) -> list[str]:
    """Units in definition order (see the module docstring)."""
    out = []
    for name, child in model.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if layer(child):
            out.append(full)
        elif isinstance(child, CONTAINERS):
            out += units(child, full, layer)
        elif any(layer(m) for m in child.modules()):
            out.append(full)
    return out


@torch.no_grad()
def stage_outputs(
    model: nn.Module,
    input_size: tuple[int, ...],
    blocks_only: bool = False,
    every_unit: bool = False,
) -> list[str]:
    """Units that end a resolution stage (4-D outputs), in call order, from one forward pass;
    with `every_unit`, every unit with a 4-D output.

    `blocks_only` leaves out bare layers (a stem or head conv whose BN folding changes what its
    output means), so the same names mean the same tensors in a model and its folded copy.
    """
    seen: list[tuple[str, tuple[int, int]]] = []
    handles = []
    names = [n for n in units(model) if not (blocks_only and is_layer(model.get_submodule(n)))]
    for name in names:

        def hook(_m, _inp, out, name=name):
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                seen.append((name, tuple(out.shape[-2:])))

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, *input_size, device=_device(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    out = []
    for i, (name, size) in enumerate(seen):
        if every_unit or i + 1 == len(seen) or seen[i + 1][1] != size:
            out.append(name)
    return out


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))
