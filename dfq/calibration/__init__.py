"""Calibration sets: synthetic images in the model's input space, saved for dfq or other
quantizers."""

from __future__ import annotations

from dfq.calibration.dataset import CalibrationSet
from dfq.calibration.formats import FORMATS, load_calibration, save_calibration
from dfq.calibration.reader import CalibrationReader

__all__ = ["FORMATS", "CalibrationReader", "CalibrationSet", "load_calibration", "save_calibration"]
