"""Fold BatchNorm into the convolution that feeds it, so the quantized graph is the deployed graph.

Which conv feeds which BN is found by running one example batch and following tensors through module
hooks, so it works on torchvision, timm and user models without knowing their block classes. timm's
`BatchNormAct2d` keeps its activation: it becomes `Sequential(drop, act)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dfq.quant.replace import replace_modules


@dataclass
class FoldResult:
    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv name, bn name)
    unfolded: list[str] = field(
        default_factory=list
    )  # BN layers left in place (find_conv_bn_pairs)


@dataclass
class _Output:
    """A conv's output tensor, kept alive for the whole pass so its `id()` cannot be reused."""

    conv: str
    tensor: torch.Tensor
    version: int  # the tensor's in-place version counter when the conv returned it
    uses: int = 0  # calls of leaf modules (the BN included) that received it


class _Tracker:
    """Module hooks that record conv outputs, who reads them, and what each BN received."""

    def __init__(self) -> None:
        self.outputs: dict[int, _Output] = {}
        self.conv_calls: dict[str, int] = {}
        self.bn_inputs: dict[str, list[tuple[int, int]]] = {}  # bn -> [(id, version)] per call

    def conv_hook(self, name: str):
        def hook(_m: nn.Module, _inp: tuple, out: torch.Tensor) -> None:
            self.conv_calls[name] = self.conv_calls.get(name, 0) + 1
            if isinstance(out, torch.Tensor):
                self.outputs[id(out)] = _Output(name, out, out._version)

        return hook

    def use_hook(self, _m: nn.Module, inp: tuple) -> None:
        for t in inp:
            rec = self.outputs.get(id(t)) if isinstance(t, torch.Tensor) else None
            if rec is not None:
                rec.uses += 1

    def bn_hook(self, name: str):
        def hook(m: nn.Module, inp: tuple) -> None:
            self.use_hook(m, inp)
            x = inp[0]
            self.bn_inputs.setdefault(name, []).append((id(x), x._version))

        return hook

    def source(self, bn: str) -> str | None:
        """The conv whose untouched, otherwise unread output is this BN's only input, if any."""
        calls = self.bn_inputs.get(bn, [])
        if len(calls) != 1:  # never called, or shared by several paths
            return None
        key, version = calls[0]
        rec = self.outputs.get(key)
        if rec is None or rec.version != version or rec.uses != 1:
            return None
        return rec.conv if self.conv_calls[rec.conv] == 1 else None


def find_conv_bn_pairs(
    model: nn.Module, example: torch.Tensor
) -> tuple[list[tuple[str, str]], list[str]]:
    """(conv, bn) pairs where folding cannot change the model's output, and the other BNs.

    A pair needs: the conv called once, the BN called once, the BN's input the very tensor the conv
    returned with no in-place change since (its version counter), and no other module reading that
    tensor. Readers are counted in forward pre-hooks of leaf modules (positional arguments), so a
    use outside any module is not seen: `z = bn(y) + y` written with torch ops in a parent's forward
    still folds, and changes `z`. Conv outputs are held until the pass ends (one batch of
    activations), so no other tensor can take over a recorded `id()`.
    """
    tracker = _Tracker()
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    handles = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(tracker.conv_hook(name)))
        if isinstance(m, nn.BatchNorm2d):
            handles.append(m.register_forward_pre_hook(tracker.bn_hook(name)))
        elif next(m.children(), None) is None:
            handles.append(m.register_forward_pre_hook(tracker.use_hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    found = {b: tracker.source(b) for b in bns}
    ok = [(c, b) for b, c in found.items() if c is not None]
    paired = {b for _, b in ok}
    return ok, [b for b in bns if b not in paired]


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv(x) * g + b with g = gamma / sqrt(var + eps), b = beta - mean * g, into conv's weight /
    bias."""
    g = (
        bn.weight / torch.sqrt(bn.running_var + bn.eps)
        if bn.affine
        else 1.0 / torch.sqrt(bn.running_var + bn.eps)
    )
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
