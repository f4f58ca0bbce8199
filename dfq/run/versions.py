"""Versions of everything that shapes a run's numbers, for `report.json`."""

from __future__ import annotations

import platform

import numpy
import onnx
import onnxruntime
import torch
import torchvision

from dfq import __version__


def versions() -> dict[str, str]:
    out = {
        "dfq": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
    try:
        import timm

        out["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
