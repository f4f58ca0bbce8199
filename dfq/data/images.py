"""Real images the user has: `.npz` arrays or an ImageFolder directory, checked before use."""

from __future__ import annotations

import json
import os
import zipfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dfq.errors import DfqError
from dfq.models.data_config import DataConfig

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
# PIL releases the GIL while decoding and resizing, so a few threads keep ahead of the model without
# touching torch's own thread count.
DECODE_WORKERS = min(4, os.cpu_count() or 1)


@dataclass
class ImageSet:
    """Images (NCHW) with optional labels.

    `x` is uint8 pixels 0..255, float pixels in [0, 1], or (when `normalized`) float tensors already
    in the model's normalized input space, as dfq's synthetic calibration sets are.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    normalized: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.x)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of one image, known without decoding a folder."""
        return tuple(self.x.shape[1:])

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

    def batches(
        self, cfg: DataConfig, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(0, len(self), batch_size):
            y = (
                self.y[i : i + batch_size]
                if self.y is not None
                else torch.empty(0, dtype=torch.long)
            )
            yield self.normalize(self.x[i : i + batch_size], cfg), y

    def check_fits(self, cfg: DataConfig, num_classes: int | None = None) -> None:
        """Fail with one line if these images cannot feed a model with `cfg` and `num_classes`."""
        want = tuple(cfg.input_size)
        have = self.image_shape
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
                f"{p}: float images must hold pixel values in [0, 1] "
                f"(got {x.min():.2f}..{x.max():.2f}); "
                "store uint8 0..255 or scale to [0, 1]"
            )
    return ImageSet(torch.from_numpy(np.ascontiguousarray(x)), y, normalized, str(p))


def _to_nchw(x: np.ndarray, p: Path) -> np.ndarray:
    if x.ndim != 4 or len(x) == 0:
        raise DfqError(
            f"{p}: images must be a non-empty 4-D array (N, C, H, W), got shape {x.shape}"
        )
    if x.shape[1] in (1, 3):
        return x
    if x.shape[-1] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    raise DfqError(f"{p}: cannot find the channel axis in shape {x.shape}; expected NCHW or NHWC")


def _load_folder(root: Path, cfg: DataConfig, limit: int | None) -> FolderImageSet:
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    files = [
        (f, i)
        for i, c in enumerate(classes)
        for f in sorted((root / c).iterdir())
        if f.suffix.lower() in IMAGE_SUFFIXES
    ]
    if not files:
        raise DfqError(f"{root}: no images found; expected one sub-folder of images per class")
    return FolderImageSet(files[:limit] if limit else files, cfg, str(root))


class FolderImageSet(ImageSet):
    """An ImageFolder directory whose images are decoded only when needed, in worker threads.

    `batches` streams, decoding batch k + 1 while the caller runs the model on batch k, so
    evaluation starts after one batch instead of after the whole folder. `x` decodes every image
    once, for code that wants all pixels at hand. Either way the pixels, order and labels are those
    of a serial loop over the files with `_read_image`.
    """

    def __init__(
        self,
        files: list[tuple[Path, int]],
        cfg: DataConfig,
        source: str,
        workers: int = DECODE_WORKERS,
    ) -> None:
        self.files = files
        self.cfg = cfg
        self.workers = max(1, workers)
        self.y = torch.tensor([label for _, label in files], dtype=torch.long)
        self.normalized = False
        self.source = source
        self._x: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"FolderImageSet({self.source!r}, {len(self)} images)"

    def __len__(self) -> int:
        return len(self.files)

    @property
    def x(self) -> torch.Tensor:
        if self._x is None:
            pool = ThreadPoolExecutor(self.workers, thread_name_prefix="dfq-decode")
            try:
                xs = list(pool.map(_read_image, [f for f, _ in self.files], [self.cfg] * len(self)))
            finally:  # on an unreadable image, do not decode the rest before reporting it
                pool.shutdown(wait=True, cancel_futures=True)
            self._x = torch.from_numpy(np.stack(xs))
        return self._x

    @property
    def image_shape(self) -> tuple[int, ...]:
        return (3, *self.cfg.input_size[1:])  # `_read_image` converts to RGB and crops to size

    def take(self, n: int | None) -> ImageSet:
        if n is None or n >= len(self):
            return self
        if self._x is not None:
            return ImageSet(self._x[:n], self.y[:n], False, self.source)
        return FolderImageSet(self.files[:n], self.cfg, self.source, self.workers)

    def batches(
        self, cfg: DataConfig, batch_size: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self._x is not None:
            yield from super().batches(cfg, batch_size)
            return
        starts = range(0, len(self), batch_size)
        for i, x in zip(
            starts, _decode_ahead(self.files, self.cfg, batch_size, self.workers), strict=True
        ):
            yield self.normalize(torch.from_numpy(x), cfg), self.y[i : i + batch_size]


def _decode_ahead(
    files: list[tuple[Path, int]], cfg: DataConfig, batch_size: int, workers: int
) -> Iterator[np.ndarray]:
    """Stacked uint8 batches in file order; the next batch decodes while the caller holds this one.

    At most two batches are in flight, so memory stays bounded however large the folder.
    """
    pool = ThreadPoolExecutor(workers, thread_name_prefix="dfq-decode")
    pending: deque[list[Future]] = deque()
    try:
        for i in range(0, len(files), batch_size):
            pending.append([pool.submit(_read_image, f, cfg) for f, _ in files[i : i + batch_size]])
            if len(pending) == 2:
                yield np.stack([job.result() for job in pending.popleft()])
        while pending:
            yield np.stack([job.result() for job in pending.popleft()])
    finally:  # also when the caller stops early: drop queued work, wait for the running images
        pool.shutdown(wait=True, cancel_futures=True)


def _read_image(f: Path, cfg: DataConfig) -> np.ndarray:
    try:
        with Image.open(f) as im:
            return _resize_crop(im.convert("RGB"), cfg)
    except OSError as e:
        raise DfqError(f"{f}: cannot read image ({e})") from None


def _resize_crop(im: Image.Image, cfg: DataConfig) -> np.ndarray:
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
