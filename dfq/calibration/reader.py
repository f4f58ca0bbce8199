"""`CalibrationReader`: a dfq calibration set as onnxruntime's `CalibrationDataReader`.

from onnxruntime.quantization import quantize_static
quantize_static("model.onnx", "model.int8.onnx", CalibrationReader("calib.npz", "input"))
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from dfq.calibration.dataset import CalibrationSet
from dfq.calibration.formats import load_calibration
from dfq.errors import DfqError


class CalibrationReader(CalibrationDataReader):
    """Feeds batches of a saved (or in-memory) calibration set to an ONNX input by name.

    `batch_size` 1 suits models exported with a fixed batch; a dynamic-batch model calibrates faster
    with larger batches.
    """

    def __init__(
        self, path: str | Path | CalibrationSet, input_name: str | None = None, batch_size: int = 1
    ) -> None:
        if batch_size < 1:
            raise DfqError(f"batch_size must be at least 1, got {batch_size}")
        self.calib = path if isinstance(path, CalibrationSet) else load_calibration(path)
        self.input_name = input_name or self.calib.input_name
        self.batch_size = batch_size
        self._it: Iterator[dict[str, np.ndarray]] = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for x, _ in self.calib.batches(self.batch_size):
            yield {self.input_name: np.ascontiguousarray(x.numpy(), dtype=np.float32)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()

    def __len__(self) -> int:
        return (len(self.calib) + self.batch_size - 1) // self.batch_size
