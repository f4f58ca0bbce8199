"""ONNX export (float and QDQ) and onnxruntime evaluation."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dfq.export.export_config import ExportConfig
from dfq.export.fusion import prepare_for_export
from dfq.export.onnx import export_onnx
from dfq.models.data_config import DataConfig

ONNX_FILENAME = "model.onnx"

__all__ = ["ExportConfig", "export_onnx", "export_quantized", "prepare_for_export"]


def export_quantized(
    model: nn.Module,
    out_dir: str | Path,
    data_config: DataConfig,
    calib: torch.Tensor,
    cfg: ExportConfig | None = None,
    threads: int | None = None,
) -> dict:
    """What `dfq quantize` calls: prepare the model for fused kernels, then write `model.onnx`.

    `prepare_for_export` changes the model (output quantizers, int32-grid biases), so call this
    before saving or evaluating the quantized model: the saved model, its accuracy and the ONNX file
    then agree. `calib` are normalized calibration images (the synthetic set).
    """
    added = prepare_for_export(model, calib, tuple(data_config.input_size))
    summary = export_onnx(model, Path(out_dir) / ONNX_FILENAME, cfg, data_config, calib, threads)
    summary["quantizers_added"] = added
    return summary
