"""Real images the user has: `.npz` arrays or an ImageFolder directory, checked before use."""
from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dfq.errors import DfqError
from dfq.models.data_config import DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


@dataclass
class ImageSet:
    """Images (NCHW) with optional labels.

    `x` is uint8 pixels 0..255, float pixels in [0, 1], or (when `normalized`) float tensors already in
    the model's normalized input space, as dfq's synthetic calibration sets are.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    normalized: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.x)

    def take(self, n: int | None) -> ImageSet:
        if n is None or n >= len(self):
            return self
        y = None if self.y is None else self.y[:n]
        return ImageSet(self.x[:n], y, self.normalized, self.source)

    def normalize(self, x: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
        """Bring a slice of `x` into the model's input space (float32, mean/std applied)."""
        if self.normalized:
            return x.float()
        return cfg.normalize(x.float() / 255.0 if x.dtype == torch.uint8 else x.float())

    def batches(self, cfg: DataConfig, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            y = self.y[i:i + batch_size] if self.y is not None else torch.empty(0, dtype=torch.long)
            yield self.normalize(self.x[i:i + batch_size], cfg), y

    def check_fits(self, cfg: DataConfig, num_classes: int | None = None) -> None:
        """Fail with one line if these images cannot feed a model with `cfg` and `num_classes`."""
        want = tuple(cfg.input_size)
        have = tuple(self.x.shape[1:])
        if have != want:
            raise DfqError(
                f"{self.source}: images are {_fmt(have)} but the model expects {_fmt(want)}; "
                "resize the data, or pass --input-size if the model was trained at that size"
            )
        if num_classes is not None and self.y is not None and len(self.y):
            lo, hi = int(self.y.min()), int(self.y.max())
            if lo < 0 or hi >= num_classes:
                raise DfqError(
                    f"{self.source}: labels range over {lo}..{hi} but the model has {num_classes} "
                    f"classes (0..{num_classes - 1}); check that the labels belong to this model"
                )


def load_images(path: str | Path, cfg: DataConfig, limit: int | None = None) -> ImageSet:
    """Read `.npz` (keys `x`, `y`) or an ImageFolder directory (resized per `cfg`)."""
    p = Path(path)
    if not p.exists():
        raise DfqError(f"data not found: {p}")
    if p.is_dir():
        return _load_folder(p, cfg, limit)
    if p.suffix != ".npz":
        raise DfqError(f"{p}: unsupported data file; give an .npz with arrays x and y, or a folder")
    return _load_npz(p, limit)


def _load_npz(p: Path, limit: int | None) -> ImageSet:
    try:
        arrays = np.load(p, allow_pickle=False)
        keys = list(arrays.files)
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise DfqError(f"{p} is not a readable .npz archive ({e})") from None
    meta = json.loads(str(arrays["dfq_meta"])) if "dfq_meta" in keys else {}
    xkey = "x" if "x" in keys else meta.get("input_name")
    if xkey not in keys:
        raise DfqError(f"{p} has no image array 'x' (arrays: {', '.join(keys)})")
    ykey = "y" if "y" in keys else ("labels" if "labels" in keys else None)
    x = arrays[xkey][:limit] if limit else arrays[xkey]
    y = None if ykey is None else (arrays[ykey][:limit] if limit else arrays[ykey])
    x = _to_nchw(x, p)
    if y is not None:
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DfqError(
                f"{p}: labels must be one integer per image, got shape {y.shape} ({y.dtype}) "
                f"for {len(x)} images"
            )
        y = torch.from_numpy(y.astype(np.int64))
    normalized = bool(meta.get("normalized", False))
    if x.dtype != np.uint8 and not normalized:
        x = x.astype(np.float32)
        if x.size and (x.min() < -0.01 or x.max() > 1.01):
            raise DfqError(
                f"{p}: float images must hold pixel values in [0, 1] (got {x.min():.2f}..{x.max():.2f}); "
                "store uint8 0..255 or scale to [0, 1]"
            )
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), y, normalized, str(p))


def _to_nchw(x: np.ndarray, p: Path) -> np.ndarray:
    if x.ndim != 4 or len(x) == 0:
        raise DfqError(f"{p}: images must be a non-empty 4-D array (N, C, H, W), got shape {x.shape}")
    if x.shape[1] in (1, 3):
        return x
    if x.shape[-1] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise DfqError(f"{p}: cannot find the channel axis in shape {x.shape}; expected NCHW or NHWC")


def _load_folder(root: Path, cfg: DataConfig, limit: int | None) -> ImageSet:
    from PIL import Image

    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [(f, i) for i, c in enumerate(classes) for f in sorted((root / c).iterdir())
             if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise DfqError(f"{root}: no images found; expected one sub-folder of images per class")
    files = files[:limit] if limit else files
    xs = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                xs.append(_resize_crop(im.convert("RGB"), cfg))
        except OSError as e:
            raise DfqError(f"{f}: cannot read image ({e})") from None
    y = torch.tensor([i for _, i in files], dtype=torch.long)
    return ImageSet(torch.from_numpy(np.stack(xs)), y, False, str(root))


def _resize_crop(im, cfg: DataConfig) -> np.ndarray:
    from PIL import Image

    _, h, w = cfg.input_size
    scale_h, scale_w = int(h / cfg.crop_pct), int(w / cfg.crop_pct)
    resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
    ratio = max(scale_h / im.height, scale_w / im.width)
    size = (max(w, round(im.width * ratio)), max(h, round(im.height * ratio)))
    im = im.resize(size, resample[cfg.interpolation])
    left, top = (im.width - w) // 2, (im.height - h) // 2
    return np.asarray(im.crop((left, top, left + w, top + h))).transpose(2, 0, 1).copy()


def _fmt(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]}x{shape[2]}" if len(shape) == 3 else str(shape)
