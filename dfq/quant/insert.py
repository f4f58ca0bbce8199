"""Turn a float model into a fake-quantized one: fold BN, swap layers, initialize ranges.

The first conv and the last linear (in call order) take `first_last_bits`; every other registered
layer takes `wbits` / `abits`. Under "same" all layers take `wbits` / `abits` except the network's
input, the image, which stays at 8 bits: image data are 8-bit, and the published all-layers tables
(GDFQ, Qimera, IntraQ) quantize activations after ReLUs and feed the first conv a float image.
Modules with parameters that cannot be quantized are returned by name so the report lists them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from dfq.quant.fold import fold_bn
from dfq.quant.layers import QUANT_LAYERS, quant_layers
from dfq.quant.quant_config import QuantConfig
from dfq.quant.ranges import init_act_scale, init_weight_scale, observe_inputs
from dfq.quant.replace import replace_modules


@dataclass
class PrepareResult:
    folded: list[tuple[str, str]] = field(default_factory=list)
    bits: dict[str, tuple[int, int]] = field(default_factory=dict)  # layer -> (wbits, abits)
    unquantized: list[str] = field(default_factory=list)  # "name (Type): why"


# Subclasses whose `forward` differs only for TorchScript, so the quantized layer computes the same.
SAME_FORWARD = {"timm.layers.linear.Linear"}


def quantizable(module: nn.Module) -> bool:
    """Registered layer types, and subclasses that compute the same `forward` (e.g. timm's Linear)."""
    cls = type(module)
    same = f"{cls.__module__}.{cls.__qualname__}" in SAME_FORWARD
    for float_type in QUANT_LAYERS:
        if isinstance(module, float_type) and (same or cls.forward is float_type.forward):
            return not (isinstance(module, nn.Conv2d) and module.padding_mode != "zeros")
    return False


def unquantizable(model: nn.Module, lone_bn: list[str]) -> list[str]:
    """Leaf modules that hold parameters but stay float, each with the reason."""
    out = [f"{n} ({type(model.get_submodule(n)).__name__}): BatchNorm without a conv right before it"
           for n in lone_bn]
    for name, m in model.named_modules():
        if name in lone_bn or quantizable(m) or next(m.children(), None) is not None:
            continue
        if any(True for _ in m.parameters(recurse=False)):
            out.append(f"{name} ({type(m).__name__}): no quantized version of this layer type")
    return out


IMAGE_BITS = 8  # the first conv's input under first_last_bits "same"


def layer_bits(order: list[str], cfg: QuantConfig) -> dict[str, tuple[int, int]]:
    bits = {n: (cfg.wbits, cfg.abits) for n in order}
    if not order:
        return bits
    if cfg.first_last_bits == "same":
        bits[order[0]] = (cfg.wbits, max(cfg.abits, IMAGE_BITS))
    else:
        edge = int(cfg.first_last_bits)
        bits[order[0]] = bits[order[-1]] = (edge, edge)
    return bits


@torch.no_grad()
def prepare(model: nn.Module, cfg: QuantConfig, batches: list[torch.Tensor]) -> PrepareResult:
    """Fold, quantize and range-initialize `model` in place (eval mode) on normalized `batches`."""
    model.eval()
    fold = fold_bn(model, batches[0][:2])
    names = [n for n, m in model.named_modules() if quantizable(m)]
    stats = observe_inputs(model, names, batches)
    order = sorted((n for n in names if n in stats), key=lambda n: stats[n].order)
    result = PrepareResult(folded=fold.folded, bits=layer_bits(order, cfg))
    result.unquantized = unquantizable(model, fold.unfolded)
    result.unquantized += [f"{n} ({type(model.get_submodule(n)).__name__}): never called in forward"
                           for n in names if n not in stats]

    def make(name: str, m: nn.Module) -> nn.Module:
        wb, ab = result.bits[name]
        return QUANT_LAYERS[_float_type(m)].from_float(m, wb, ab, input_signed=stats[name].min < 0)

    replace_modules(model, lambda n, m: n in result.bits, make)
    for name, layer in quant_layers(model).items():
        init_weight_scale(layer.weight_quantizer, layer.weight, cfg.weight_init)
        init_act_scale(layer.input_quantizer, stats[name].sample(), cfg.act_init, cfg.act_percentile)
    return result


def _float_type(m: nn.Module) -> type[nn.Module]:
    return next(t for t in QUANT_LAYERS if isinstance(m, t))
