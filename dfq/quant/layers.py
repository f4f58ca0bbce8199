"""Quantized conv / linear layers that subclass the torch layers, so state-dict keys stay familiar.

`y = layer(input_quantizer(x), weight_quantizer(weight)) + bias`, then `output_quantizer(y)` when
one is attached (the exporter may add 8-bit output quantizers so onnxruntime fuses QLinearConv).
Weights are per output channel, signed, zero point 0; inputs per tensor, unsigned when they are
never negative.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dfq.quant.quantizer import MIN_SCALE, Quantizer

# Registry: float layer type -> quantized class (as timm's register_model: a dict and a decorator).
QUANT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {}


def register_quant_layer(float_type: type[nn.Module]) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        QUANT_LAYERS[float_type] = cls
        return cls

    return deco


class QuantMixin:
    """What both quantized layers share: quantizers, weight rounding hook, baking."""

    weight: nn.Parameter
    weight_quantizer: Quantizer
    input_quantizer: Quantizer | None
    output_quantizer: Quantizer | None
    rounding: nn.Module | None  # set only while reconstructing (AdaRound soft bits)

    def _init_quant(self, wbits: int, abits: int | None, input_signed: bool) -> None:
        dev = self.weight.device
        self.weight_quantizer = Quantizer(wbits, True, 0, self.weight.shape[0]).to(dev)
        self.input_quantizer = None if abits is None else Quantizer(abits, input_signed).to(dev)
        self.output_quantizer = None
        self.rounding = None

    def quantized_weight(self) -> torch.Tensor:
        if self.rounding is not None:
            return self.rounding(self.weight)
        return self.weight_quantizer(self.weight)

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def quant_output(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.output_quantizer is None else self.output_quantizer(y)

    @torch.no_grad()
    def bake(self) -> None:
        """Replace the float weight by its quantized value, so `round(weight / scale)` is exact."""
        for q in (self.weight_quantizer, self.input_quantizer, self.output_quantizer):
            if q is not None:
                q.scale.clamp_(min=MIN_SCALE)  # the exporter divides by the parameter itself
        self.weight.copy_(self.quantized_weight())
        self.rounding = None

    def _copy_float(self, module: nn.Module) -> None:
        with torch.no_grad():
            self.weight.copy_(module.weight)
            if module.bias is not None:
                self.bias.copy_(module.bias)


@register_quant_layer(nn.Conv2d)
class QuantConv2d(QuantMixin, nn.Conv2d):
    same_pad: tuple[int, int, int, int] | None = None  # (left, right, top, bottom), TF "same"

    @classmethod
    def from_float(
        cls,
        module: nn.Conv2d,
        wbits: int,
        abits: int | None,
        input_signed: bool = True,
        same_pad: tuple[int, int, int, int] | None = None,
    ) -> QuantConv2d:
        """`same_pad`: the static padding of a TF-"same" conv (timm's Conv2dSame) at the model's
        input size, applied to the quantized input (zeros stay on the grid)."""
        q = cls(
            module.in_channels,
            module.out_channels,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.groups,
            module.bias is not None,
            module.padding_mode,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        q._copy_float(module)
        q._init_quant(wbits, abits, input_signed)
        q.same_pad = None if same_pad is None else tuple(int(p) for p in same_pad)
        return q.train(module.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quant_input(x)
        if self.same_pad is not None:
            x = F.pad(x, self.same_pad)
        y = self._conv_forward(x, self.quantized_weight(), self.bias)
        return self.quant_output(y)


@register_quant_layer(nn.Linear)
class QuantLinear(QuantMixin, nn.Linear):
    @classmethod
    def from_float(
        cls,
        module: nn.Linear,
        wbits: int,
        abits: int | None,
        input_signed: bool = True,
        same_pad: None = None,
    ) -> QuantLinear:
        q = cls(
            module.in_features,
            module.out_features,
            module.bias is not None,
            device=module.weight.device,
            dtype=module.weight.dtype,
        )
        q._copy_float(module)
        q._init_quant(wbits, abits, input_signed)
        return q.train(module.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(self.quant_input(x), self.quantized_weight(), self.bias)
        return self.quant_output(y)


QuantLayer = (QuantConv2d, QuantLinear)


def quant_layers(model: nn.Module) -> dict[str, QuantMixin]:
    """Every quantized layer of `model` by qualified name, in forward-definition order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}
