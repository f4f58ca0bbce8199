"""Calibration sets: synthetic images in the model's input space, saved for dfq or other quantizers.

`CalibrationReader` (an onnxruntime CalibrationDataReader) is imported lazily: onnxruntime's
quantization package is slow to import and only that class needs it.
"""
from __future__ import annotations

from typing import Any

from dfq.calibration.dataset import CalibrationSet
from dfq.calibration.io import FORMATS, load_calibration, save_calibration

__all__ = ["FORMATS", "CalibrationReader", "CalibrationSet", "load_calibration", "save_calibration"]


def __getattr__(name: str) -> Any:
    if name == "CalibrationReader":
        from dfq.calibration.reader import CalibrationReader

        return CalibrationReader
    raise AttributeError(f"module 'dfq.calibration' has no attribute '{name}'")
