"""Feature capture for the relation losses: stage outputs and the penultimate vector, by hooks."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from dfq.errors import DfqError


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer, whose input is the penultimate feature vector."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DfqError(
            "the model has no final Linear layer to take penultimate features from; "
            "turn the relation loss off (relation: false in the recipe)"
        )
    return linears[-1]


@contextmanager
def captured_outputs(model: nn.Module, names: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """The outputs of submodules `names` on each forward pass, by name; hooks removed on exit."""
    store: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:

        def hook(_m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
            store[name] = out

        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def penultimate_features(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the classifier's input on each forward pass under key 'features' (flattened)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        store["features"] = inputs[0].flatten(1)

    handle = last_linear(model).register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
