"""`CalibrationSet`: synthetic images plus what a quantizer needs to use them correctly."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from dfq.errors import DfqError
from dfq.models.data_config import DataConfig

DEFAULT_INPUT_NAME = "input"


@dataclass
class CalibrationSet:
    """Images float32 NCHW in the model's normalized input space, int64 labels, and metadata.

    `metadata` carries at least `data_config` (a DataConfig dict) and `input_name`, so an exported
    set can be de-normalized (PNG) or fed to an ONNX model by name without guessing; synthesis adds
    the model, seed, resolved config and final losses.
    """

    images: torch.Tensor
    labels: torch.Tensor
    metadata: dict[str, Any] = field(default_factory=dict)
    source: Any = field(default=None, repr=False, compare=False)  # a live image source (DFAD)

    def __post_init__(self) -> None:
        self.images = torch.as_tensor(self.images).detach().float().cpu().contiguous()
        self.labels = torch.as_tensor(self.labels).detach().long().cpu()
        if self.images.ndim != 4:
            raise DfqError(f"calibration images must be NCHW, got shape {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise DfqError(
                f"need one label per image: {len(self.images)} images, "
                f"labels of shape {tuple(self.labels.shape)}"
            )
        self.metadata.setdefault("input_name", DEFAULT_INPUT_NAME)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def input_name(self) -> str:
        return str(self.metadata["input_name"])

    @property
    def data_config(self) -> DataConfig:
        if "data_config" not in self.metadata:
            raise DfqError("calibration set has no data config (mean, std, size) in its metadata")
        return DataConfig.from_dict(self.metadata["data_config"])

    def batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size], self.labels[i : i + batch_size]

    def pixels_uint8(self) -> torch.Tensor:
        """De-normalized to uint8 0..255 (rounded), the form PNG files hold."""
        pixels = self.data_config.denormalize(self.images)
        return pixels.mul(255.0).round().clamp(0, 255).to(torch.uint8)
