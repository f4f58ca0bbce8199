"""Quantizers attached to a module's input or output: the residual stream and activations.

In a residual block `y = f(x) + x`, quantizing `x` once at the block's entry (a forward pre-hook)
makes both the block's first conv and its shortcut read the same quantized tensor, as an integer
runtime does (DESIGN section 2). The same mechanism quantizes an activation module's output (the
`gdfq` protocol quantizes after every ReLU) or a block's output where the exporter needs a
QuantizeLinear. The quantizer becomes a submodule (`dfq_input_quantizer` / `dfq_output_quantizer`),
so it is saved, reloaded, reconstructed and exported like any other.
"""

from __future__ import annotations

import torch
from torch import nn

from dfq.quant.quantizer import Quantizer

WHERE = ("input", "output")


def _attr(where: str) -> str:
    if where not in WHERE:
        raise ValueError(f"where must be one of {WHERE}, got {where!r}")
    return f"dfq_{where}_quantizer"


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    if not args or not isinstance(args[0], torch.Tensor):
        return args
    return (getattr(module, _attr("input"))(args[0]), *args[1:])


def _quantize_output(module: nn.Module, _args: tuple, out: object) -> object:
    if not isinstance(out, torch.Tensor):
        return out
    return getattr(module, _attr("output"))(out)


def attach_quantizer(module: nn.Module, q: Quantizer, where: str) -> None:
    """Register `q` on `module` and apply it to its first input or its output on every call."""
    attr = _attr(where)
    if hasattr(module, attr):
        raise ValueError(f"{type(module).__name__} already has an attached {where} quantizer")
    module.add_module(attr, q)
    if where == "input":
        handle = module.register_forward_pre_hook(_quantize_input)
    else:
        handle = module.register_forward_hook(_quantize_output)
    setattr(module, f"_dfq_{where}_hook", handle)


def detach_quantizer(module: nn.Module, where: str) -> None:
    getattr(module, f"_dfq_{where}_hook").remove()
    delattr(module, f"_dfq_{where}_hook")
    delattr(module, _attr(where))


def attached_quantizers(model: nn.Module, where: str) -> dict[str, Quantizer]:
    """Module name -> its attached `where` quantizer, for every module that has one."""
    attr = _attr(where)
    return {
        name: getattr(m, attr)
        for name, m in model.named_modules()
        if isinstance(getattr(m, attr, None), Quantizer)
    }
