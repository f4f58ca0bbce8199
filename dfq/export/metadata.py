"""The metadata dfq stores in an ONNX file, so a bare .onnx knows its preprocessing.

`export_onnx` stamps it; `dfq.export.runtime` reads it back (`dfq evaluate model.onnx`).
"""

from __future__ import annotations

import json

import onnx
from onnx import helper
from torch import nn

from dfq import __version__
from dfq.errors import DfqError
from dfq.models.data_config import DataConfig

META_DATA_CONFIG = "dfq.data_config"
META_VERSION = "dfq.version"
META_QUANT = "dfq.quantization"


def stamp(proto: onnx.ModelProto, opset: int, data_config: DataConfig, quantization: str) -> None:
    """Set the opset, producer and the metadata `dfq evaluate` reads back."""
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = opset
    if opset >= 21:
        proto.ir_version = max(proto.ir_version, 10)
    proto.producer_name, proto.producer_version = "dfq", __version__
    meta = {
        META_DATA_CONFIG: json.dumps(data_config.to_dict()),
        META_VERSION: __version__,
        META_QUANT: quantization,
    }
    helper.set_model_props(proto, meta)


def describe(found: dict[str, nn.Module]) -> str:
    """`fp32`, or the weight / activation bit widths present, e.g. `W4A4 (first/last W8A8)`."""
    if not found:
        return "fp32"
    w = sorted({q.bits for q in found.values() if q.channel_axis is not None})
    a = sorted({q.bits for q in found.values() if q.channel_axis is None})
    return f"W{'/'.join(map(str, w)) or '-'}A{'/'.join(map(str, a)) or '-'}"


def read_data_config(meta: dict[str, str], source: str) -> DataConfig:
    """The DataConfig stored at export; a clear error for ONNX files dfq did not write."""
    if META_DATA_CONFIG not in meta:
        raise DfqError(
            f"{source} has no dfq preprocessing metadata (mean, std, input size); "
            "re-export it with `dfq export`"
        )
    try:
        return DataConfig.from_dict(json.loads(meta[META_DATA_CONFIG]))
    except (ValueError, TypeError) as e:
        raise DfqError(
            f"{source}: unreadable dfq metadata ({e}); re-export it with `dfq export`"
        ) from None
