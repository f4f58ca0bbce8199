"""`export_onnx`: a model (fake-quantized or float) to a checked ONNX file with its preprocessing.

The file stores the model's DataConfig in `metadata_props`, so `dfq evaluate model.onnx` knows the
mean, std and input size without the PyTorch model.
"""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import torch
from onnx import helper
from torch import nn

from dfq import __version__
from dfq.errors import DfqError, DfqFailure
from dfq.export.config import ExportConfig
from dfq.export.qdq import lower_markers
from dfq.export.trace import trace_graph
from dfq.models.data_config import DataConfig

META_DATA_CONFIG = "dfq.data_config"
META_VERSION = "dfq.version"
META_QUANT = "dfq.quantization"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    cfg: ExportConfig | None = None,
    data_config: DataConfig | None = None,
    calib: torch.Tensor | None = None,
) -> dict:
    """Write `model` to `path` as ONNX (QDQ where it holds enabled quantizers), then check it.

    Args:
        model: a float model, or one from `dfq.quant` (run `prepare_for_export` first so every
            quantized convolution fuses into QLinearConv).
        cfg: export options; defaults to opset 13, int8 containers, checked.
        data_config: the model's preprocessing, stored in the file; ImageNet 224 if omitted.
        calib: normalized images (N, C, H, W) the check feeds to onnxruntime and PyTorch;
            without them the check uses standard-normal images.

    Returns a summary: path, size in bytes, number of quantizers, and the check's figures.
    """
    cfg = cfg or ExportConfig()
    data_config = data_config or DataConfig()
    path = Path(path)
    proto, found = trace_graph(model, data_config.input_size, cfg.opset)
    lower_markers(proto, found, int4=cfg.int4)
    _stamp(proto, cfg, data_config, found)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = str(e).splitlines()[0]
        raise DfqFailure(f"the exported graph fails onnx.checker: {first}") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(path))
    summary = {"path": str(path), "bytes": path.stat().st_size, "opset": cfg.opset,
               "quantizers": len(found), "quantization": _describe(found)}
    if cfg.check:
        from dfq.export.check import check_against_torch

        images = calib if calib is not None else torch.randn(cfg.check_images,
                                                               *data_config.input_size)
        summary["check"] = check_against_torch(model, path, images[:cfg.check_images], cfg)
    return summary


def _stamp(proto: onnx.ModelProto, cfg: ExportConfig, data_config: DataConfig,
           found: dict[str, nn.Module]) -> None:
    """Set the opset, producer and the metadata `dfq evaluate` reads back."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = cfg.opset
    if cfg.opset >= 21:
        proto.ir_version = max(proto.ir_version, 10)
    proto.producer_name, proto.producer_version = "dfq", __version__
    meta = {META_DATA_CONFIG: json.dumps(data_config.to_dict()), META_VERSION: __version__,
            META_QUANT: _describe(found)}
    helper.set_model_props(proto, meta)


def _describe(found: dict[str, nn.Module]) -> str:
    """`fp32`, or the weight / activation bit widths present, e.g. `W4A4 (first/last W8A8)`."""
    if not found:
        return "fp32"
    w = sorted({q.bits for q in found.values() if q.channel_axis is not None})
    a = sorted({q.bits for q in found.values() if q.channel_axis is None})
    return f"W{'/'.join(map(str, w)) or '-'}A{'/'.join(map(str, a)) or '-'}"


def read_data_config(meta: dict[str, str], source: str) -> DataConfig:
    """The DataConfig stored at export; a clear error for ONNX files dfq did not write."""
    if META_DATA_CONFIG not in meta:
        raise DfqError(f"{source} has no dfq preprocessing metadata (mean, std, input size); "
                       "re-export it with `dfq export`")
    try:
        return DataConfig.from_dict(json.loads(meta[META_DATA_CONFIG]))
    except (ValueError, TypeError) as e:
        raise DfqError(f"{source}: unreadable dfq metadata ({e}); "
                       "re-export it with `dfq export`") from None
