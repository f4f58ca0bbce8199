"""The preprocessing a model expects: what its first layer was trained to see."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from dfq.errors import DfqError

Stats = tuple[torch.Tensor, torch.Tensor]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


def low_res_size(h: int, w: int, side: int) -> tuple[int, int] | None:
    """(H, W) scaled so that the longer side is `side`; None when `side` is 0 or not below it.
    The reduced resolution of synthesis and distillation steps (BN statistics are per channel)."""
    if not 0 < side < max(h, w):
        return None
    return max(1, round(h * side / max(h, w))), max(1, round(w * side / max(h, w)))


@dataclass
class DataConfig:
    """Input size (C, H, W), normalization and resize policy, with timm's names.

    Images are scaled to [0, 1], then normalized as (x - mean) / std. ImageFolder inputs are resized
    so that the centre crop of `crop_pct` of the short side becomes `input_size`.
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    num_classes: int = field(default=1000)

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        if len(self.input_size) != 3 or min(self.input_size) <= 0:
            raise DfqError(
                f"input size must be three positive numbers (C, H, W), got {self.input_size}"
            )
        channels = self.input_size[0]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DfqError(
                f"mean and std need {channels} values each (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.std) <= 0:
            raise DfqError(f"std values must be positive, got {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise DfqError(
                f"unknown interpolation '{self.interpolation}'; "
                f"use one of {', '.join(INTERPOLATIONS)}"
            )
        if not 0 < self.crop_pct <= 1:
            raise DfqError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def channel_stats(
        self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> Stats:
        """Mean and std as (1, C, 1, 1) tensors, to keep (e.g. as buffers) for repeated use."""

        def shaped(v: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(v, dtype=dtype, device=device).view(1, -1, 1, 1)

        return shaped(self.mean), shaped(self.std)

    def normalize(self, pixels: torch.Tensor, stats: Stats | None = None) -> torch.Tensor:
        """Pixels in [0, 1] (NCHW) -> the model's input space, `(x - mean) / std`."""
        mean, std = stats or self.channel_stats(pixels.device, pixels.dtype)
        return (pixels - mean) / std

    def denormalize(self, x: torch.Tensor, stats: Stats | None = None) -> torch.Tensor:
        """The model's input space -> pixels (in [0, 1] for images that real pixels can give)."""
        mean, std = stats or self.channel_stats(x.device, x.dtype)
        return x * std + mean

    def input_bounds(self, stats: Stats | None = None) -> Stats:
        """Where pixel values 0 and 1 land in the input space, per channel."""
        mean, std = stats or self.channel_stats()
        return (0.0 - mean) / std, (1.0 - mean) / std

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DataConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)
