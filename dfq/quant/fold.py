"""Fold BatchNorm into the convolution that feeds it, so the quantized graph is the deployed graph.

Which conv feeds which BN is found by running one example batch and matching tensors (the BN's input is
the very tensor the conv returned), so it works on torchvision, timm and user models without knowing
their block classes. timm's `BatchNormAct2d` keeps its activation: it becomes `Sequential(drop, act)`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dfq.quant.replace import replace_modules


@dataclass
class FoldResult:
    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv name, bn name)
    unfolded: list[str] = field(default_factory=list)  # BN layers with no conv right before them


def find_conv_bn_pairs(model: nn.Module, example: torch.Tensor) -> tuple[list[tuple[str, str]], list[str]]:
    """(conv, bn) pairs where the BN consumes exactly the conv's output tensor, and the lone BNs."""
    produced: dict[int, str] = {}
    uses: dict[int, int] = {}
    pairs: dict[str, str] = {}
    seen_bn: list[str] = []
    handles = []

    def conv_hook(name):
        def hook(_m, _inp, out):
            produced[id(out)] = name
        return hook

    def bn_hook(name):
        def hook(_m, inp):
            seen_bn.append(name)
            src = produced.get(id(inp[0]))
            if src is not None:
                uses[id(inp[0])] = uses.get(id(inp[0]), 0) + 1
                pairs.setdefault(name, src)
        return hook

    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook(name)))
        elif isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(bn_hook(name)))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    convs = list(pairs.values())
    ok = [(c, b) for b, c in pairs.items() if convs.count(c) == 1]
    paired = {b for _, b in ok}
    lone = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and n not in paired]
    return ok, lone


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv(x) * g + b with g = gamma / sqrt(var + eps), b = beta - mean * g, into conv's weight / bias."""
    g = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    beta = bn.bias if bn.affine else torch.zeros_like(bn.running_mean)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    new_bias = (bias - bn.running_mean) * g + beta
    conv.weight.mul_(g.view(-1, 1, 1, 1).to(conv.weight.dtype))
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype))
    else:
        conv.bias.copy_(new_bias)


def _bn_replacement(bn: nn.Module) -> nn.Module:
    act, drop = getattr(bn, "act", None), getattr(bn, "drop", None)
    extra = [m for m in (drop, act) if isinstance(m, nn.Module) and not isinstance(m, nn.Identity)]
    return nn.Sequential(*extra) if extra else nn.Identity()


def fold_bn(model: nn.Module, example: torch.Tensor) -> FoldResult:
    """Fold every conv -> BN pair of `model` in place (eval-mode model); returns what was folded."""
    pairs, lone = find_conv_bn_pairs(model, example)
    for conv_name, bn_name in pairs:
        fold_conv_bn(model.get_submodule(conv_name), model.get_submodule(bn_name))
    bn_names = {b for _, b in pairs}
    replace_modules(model, lambda n, m: n in bn_names, lambda n, m: _bn_replacement(m))
    return FoldResult(folded=pairs, unfolded=lone)
