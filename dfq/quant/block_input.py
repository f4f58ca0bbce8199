"""Block-input quantizers: quantize what a residual block receives, so its shortcut is integer too.

In a residual block `y = f(x) + x` the convolutions inside `f` quantize `x`, but the shortcut adds the
float `x`: onnxruntime then runs that Add, and the layout conversions around it, in float. Giving the
block one quantizer on its input (a forward pre-hook) makes both operands of the Add come from a
DequantizeLinear, which onnxruntime fuses into QLinearAdd. `dfq.export.fusion` decides where one
goes; this module owns how it is attached, listed and rebuilt, so saved models reload with it.
"""
from __future__ import annotations

import torch
from torch import nn

from dfq.quant.quantizer import Quantizer

ATTR = "dfq_input_quantizer"


def _quantize_first_input(module: nn.Module, args: tuple) -> tuple:
    if not args or not isinstance(args[0], torch.Tensor):
        return args
    return (getattr(module, ATTR)(args[0]), *args[1:])


def add_block_input_quantizer(block: nn.Module, q: Quantizer) -> None:
    """Register `q` as `block.dfq_input_quantizer` and apply it to the block's first input."""
    if hasattr(block, ATTR):
        raise ValueError(f"{type(block).__name__} already has a block input quantizer")
    block.add_module(ATTR, q)
    block._dfq_input_hook = block.register_forward_pre_hook(_quantize_first_input)


def remove_block_input_quantizer(block: nn.Module) -> None:
    block._dfq_input_hook.remove()
    del block._dfq_input_hook
    delattr(block, ATTR)


def block_input_quantizers(model: nn.Module) -> dict[str, Quantizer]:
    """Block name -> its input quantizer, for every block that has one."""
    return {name: getattr(m, ATTR) for name, m in model.named_modules()
            if isinstance(getattr(m, ATTR, None), Quantizer)}
