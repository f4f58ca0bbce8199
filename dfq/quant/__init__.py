"""Fake quantization (W4A4 / W8A8) of image classifiers, fine-tuned by distillation."""
from __future__ import annotations

from dfq.quant.config import QuantConfig
from dfq.quant.io import load_quantized, save_quantized
from dfq.quant.layers import QuantConv2d, QuantLinear, quant_layers
from dfq.quant.pipeline import quantize_, run_quantize
from dfq.quant.quantizer import Quantizer

__all__ = ["QuantConfig", "QuantConv2d", "QuantLinear", "Quantizer", "load_quantized", "quant_layers",
           "quantize_", "run_quantize", "save_quantized"]
