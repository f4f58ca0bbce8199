"""Save and load calibration sets: `.npz`, PNG ImageFolder, ONNX TensorProto directories.

Every writer builds its output under a temporary name beside the target and renames it at the end,
so an interrupt never leaves a truncated file under the final name; an existing target is refused
unless `overwrite`. All three formats reload to the same tensors (PNG up to its uint8 rounding).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import torch

from dfq.calibration.dataset import CalibrationSet
from dfq.errors import DfqError
from dfq.files import atomic_path
from dfq.models.data_config import DataConfig

FORMATS = ("npz", "png", "onnx-pb")
META_KEY = "dfq_meta"
SIDECAR = "dfq_calibration.json"


def save_calibration(
    cs: CalibrationSet,
    path: str | Path,
    fmt: str | None = None,
    overwrite: bool = False,
    images_per_set: int = 1,
) -> Path:
    """Write `cs` as `fmt` (default: npz for a `.npz` path); returns the path written."""
    path = Path(path)
    fmt = fmt or ("npz" if path.suffix == ".npz" else None)
    if fmt not in FORMATS:
        raise DfqError(
            f"unknown calibration format '{fmt}'; use one of {', '.join(FORMATS)}"
            if fmt
            else f"{path}: say which format to write ({', '.join(FORMATS)})"
        )
    with atomic_path(path, overwrite) as tmp:
        if fmt == "onnx-pb":
            _write_pb(cs, tmp, images_per_set)
        else:
            (_write_npz if fmt == "npz" else _write_png)(cs, tmp)
    return path


def _meta(cs: CalibrationSet, fmt: str) -> dict:
    meta = dict(cs.metadata)
    meta.update(format=fmt, normalized=True, input_name=cs.input_name, layout="NCHW")
    return meta


def _write_npz(cs: CalibrationSet, tmp: Path) -> None:
    if cs.input_name in ("labels", META_KEY):
        raise DfqError(f"input name '{cs.input_name}' clashes with a reserved array name")
    with open(tmp, "wb") as f:
        np.savez(
            f,
            **{
                cs.input_name: cs.images.numpy(),
                "labels": cs.labels.numpy(),
                META_KEY: np.array(json.dumps(_meta(cs, "npz"), default=str)),
            },
        )


def _sidecar(cs: CalibrationSet, fmt: str) -> dict:
    cfg = cs.data_config
    side = {
        "format": fmt,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "size": list(cs.images.shape[1:]),
        "layout": "NCHW",
        "input_name": cs.input_name,
        "labels": cs.labels.tolist(),
    }
    side["metadata"] = _meta(cs, fmt)
    return side


def _write_png(cs: CalibrationSet, tmp: Path) -> None:
    """One folder per class (zero-padded, so sorting keeps label order), files named by index."""
    from PIL import Image

    tmp.mkdir()
    pixels = cs.pixels_uint8().permute(0, 2, 3, 1).numpy()
    width = len(str(max(int(cs.labels.max()) if len(cs) else 0, 1)))
    for i, (img, label) in enumerate(zip(pixels, cs.labels.tolist(), strict=True)):
        folder = tmp / f"{label:0{width}d}"
        folder.mkdir(exist_ok=True)
        img = img.squeeze(-1) if img.shape[-1] == 1 else img
        Image.fromarray(img).save(folder / f"{i:06d}.png")
    side = _sidecar(cs, "png")
    side["pixel_scale"] = 255
    (tmp / SIDECAR).write_text(json.dumps(side, indent=2, default=str))


def _write_pb(cs: CalibrationSet, tmp: Path, images_per_set: int) -> None:
    """`test_data_set_<i>/input_0.pb`: the ONNX test-data layout that onnx tools and ORT read."""
    from onnx import numpy_helper

    if images_per_set < 1:
        raise DfqError(f"images_per_set must be at least 1, got {images_per_set}")
    tmp.mkdir()
    for i, (x, _) in enumerate(cs.batches(images_per_set)):
        d = tmp / f"test_data_set_{i}"
        d.mkdir()
        tensor = numpy_helper.from_array(x.numpy(), name=cs.input_name)
        (d / "input_0.pb").write_bytes(tensor.SerializeToString())
    side = _sidecar(cs, "onnx-pb")
    side["images_per_set"] = images_per_set
    (tmp / SIDECAR).write_text(json.dumps(side, indent=2, default=str))


def load_calibration(path: str | Path) -> CalibrationSet:
    """Read any of the three formats back (format found from what is on disk)."""
    p = Path(path)
    if not p.exists():
        raise DfqError(f"calibration set not found: {p}")
    if p.is_file():
        return _read_npz(p)
    side_path = p / SIDECAR
    if not side_path.is_file():
        raise DfqError(f"{p}: no {SIDECAR}; not a calibration set written by dfq")
    side = json.loads(side_path.read_text())
    reader = _read_pb if side.get("format") == "onnx-pb" else _read_png
    images = reader(p, side)
    meta = dict(side.get("metadata", {}))
    return CalibrationSet(images, torch.tensor(side["labels"], dtype=torch.long), meta)


def _read_npz(p: Path) -> CalibrationSet:
    try:
        arrays = np.load(p, allow_pickle=False)
        meta = json.loads(str(arrays[META_KEY])) if META_KEY in arrays.files else {}
        name = meta.get("input_name", "x")
        if name not in arrays.files or "labels" not in arrays.files:
            have = ", ".join(arrays.files)
            raise DfqError(f"{p}: needs arrays '{name}' and 'labels' (has {have})")
        images, labels = torch.from_numpy(arrays[name]), torch.from_numpy(arrays["labels"])
        return CalibrationSet(images, labels, meta)
    except (zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise DfqError(f"{p} is not a readable calibration .npz ({e})") from None


def _read_png(p: Path, side: dict) -> torch.Tensor:
    from PIL import Image

    files = sorted((f for f in p.glob("*/*.png")), key=lambda f: int(f.stem))
    pixels = np.stack([np.asarray(Image.open(f)) for f in files])
    if pixels.ndim == 3:
        pixels = pixels[..., None]
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / float(side.get("pixel_scale", 255))
    return DataConfig(side["size"], side["mean"], side["std"]).normalize(x)


def _read_pb(p: Path, side: dict) -> torch.Tensor:
    import onnx
    from onnx import numpy_helper

    dirs = sorted(p.glob("test_data_set_*"), key=lambda d: int(d.name.rsplit("_", 1)[1]))
    arrays = []
    for d in dirs:
        tensor = onnx.TensorProto()
        tensor.ParseFromString((d / "input_0.pb").read_bytes())
        arrays.append(numpy_helper.to_array(tensor))
    return torch.from_numpy(np.concatenate(arrays))
