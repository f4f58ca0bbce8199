"""Fake quantization (W4A4 / W8A8) of image classifiers, fine-tuned by distillation."""

from __future__ import annotations

from dfq.quant.layers import QuantConv2d, QuantLinear, quant_layers
from dfq.quant.pipeline import quantize_
from dfq.quant.quant_config import QuantConfig
from dfq.quant.quantizer import Quantizer
from dfq.quant.saved import load_quantized, save_quantized

__all__ = [
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "Quantizer",
    "load_quantized",
    "quant_layers",
    "quantize_",
    "save_quantized",
]
