"""`export_onnx`: a model (fake-quantized or float) to a checked ONNX file with its preprocessing.

The file stores the model's DataConfig in `metadata_props`, so `dfq evaluate model.onnx` knows the
mean, std and input size without the PyTorch model.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from dfq.errors import DfqFailure
from dfq.export.check import check_against_torch
from dfq.export.clips import drop_redundant_clips
from dfq.export.export_config import ExportConfig, weight_type_for_this_cpu
from dfq.export.metadata import describe, stamp
from dfq.export.qdq import lower_markers
from dfq.export.trace import trace_graph
from dfq.models.data_config import DataConfig


def export_onnx(
    model: nn.Module,
    path: str | Path,
    cfg: ExportConfig | None = None,
    data_config: DataConfig | None = None,
    calib: torch.Tensor | None = None,
    threads: int | None = None,
) -> dict:
    """Write `model` to `path` as ONNX (QDQ where it holds enabled quantizers), then check it.

    Args:
        model: a float model, or one from `dfq.quant` (run `prepare_for_export` first so every
            quantized convolution fuses into QLinearConv).
        cfg: export options; defaults to opset 13, int8 containers, checked.
        data_config: the model's preprocessing, stored in the file; ImageNet 224 if omitted.
        calib: normalized images (N, C, H, W) the check feeds to onnxruntime and PyTorch;
            without them the check uses standard-normal images.
        threads: onnxruntime threads for the check (default: as many as PyTorch uses).

    Returns a summary: path, size in bytes, number of quantizers, and the check's figures.
    """
    cfg = cfg or ExportConfig()
    data_config = data_config or DataConfig()
    path = Path(path)
    proto, found = trace_graph(model, data_config.input_size, cfg.opset)
    drop_redundant_clips(proto, found)
    weight_type = cfg.weight_type if cfg.weight_type != "auto" else weight_type_for_this_cpu()
    lower_markers(proto, found, int4=cfg.int4, unsigned_weights=weight_type == "uint8")
    stamp(proto, cfg.opset, data_config, describe(found))
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).splitlines()[0]
        raise DfqFailure(f"the exported graph fails onnx.checker: {first}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    summary = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "opset": cfg.opset,
        "weight_type": weight_type,
        "quantizers": len(found),
        "quantization": describe(found),
    }
    if cfg.check:
        images = (
            calib if calib is not None else torch.randn(cfg.check_images, *data_config.input_size)
        )
        summary["check"] = check_against_torch(
            model, path, images[: cfg.check_images], cfg, threads
        )
    return summary
