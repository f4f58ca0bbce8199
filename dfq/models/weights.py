"""Reading checkpoints the way users actually have them, and applying them with errors that help."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from dfq.errors import DfqError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "net")
_PREFIXES = ("module.", "_orig_mod.", "model.")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely (tensors only) and return its state dict, prefixes stripped.

    Accepts a raw state dict, a dict that holds one under a usual key (`state_dict`, `model`, ...),
    and `DataParallel` / `torch.compile` prefixes; tensors saved from CUDA are mapped to the CPU.
    """
    p = Path(path)
    if not p.exists():
        raise DfqError(f"weights file not found: {p}")
    if p.is_dir():
        raise DfqError(f"weights path {p} is a directory; give the checkpoint file itself")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):
            raise DfqError(
                f"{p} holds pickled Python objects, not just tensors; "
                "loading it would run code from "
                "the file. Save a state dict instead (torch.save(model.state_dict(), path)), "
                "or, if "
                "you trust the file, give it as the MODEL with --trust-checkpoint"
            ) from None
        raise _not_a_checkpoint(p, e) from None
    except Exception as e:  # torch raises RuntimeError/EOFError/ValueError for foreign files
        raise _not_a_checkpoint(p, e) from None
    return _strip_prefixes(_find_state_dict(obj, p))


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model` strictly, naming the first missing/unexpected/mis-shaped key."""
    expected = model.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in state and k not in optional]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), first '{missing[0]}'")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), first '{unexpected[0]}'")
        raise DfqError(
            f"weights {source} do not fit this model: {'; '.join(parts)}. "
            "Check the model name, or that the checkpoint was saved from this architecture"
        )
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise DfqError(
                f"weights {source} do not fit this model: '{k}' has shape {tuple(v.shape)} in the "
                f"file but {tuple(expected[k].shape)} in the model"
            )
    model.load_state_dict(state, strict=False)


def _find_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), dict):
                return _find_state_dict(obj[key], path)
        keys = ", ".join(map(str, list(obj)[:5]))
        raise DfqError(
            f"{path} holds a dict without a state dict (keys: {keys}); expected tensors, or one "
            f"under one of {', '.join(_WRAPPER_KEYS)}"
        )
    raise DfqError(f"{path} holds a {type(obj).__name__}, not a state dict")


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _not_a_checkpoint(path: Path, error: BaseException) -> DfqError:
    """Say what the file is instead, from its first bytes: torch's own message names a byte."""
    found = what_file_is(path)
    if found:
        return DfqError(f"{path} is not a PyTorch checkpoint: {found}")
    return DfqError(f"{path} is not a PyTorch checkpoint ({_first_line(error)})")


_MAGIC = {
    b"\x93NUMPY": "it is a NumPy .npy array",
    b"\x89HDF": "it is an HDF5 file (Keras?); convert the weights to a PyTorch state dict",
    b"\x1f\x8b": "it is gzip-compressed; decompress it first",
}
_ONNX_FIELDS = {0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42}  # ModelProto fields after ir_version


def what_file_is(path: Path) -> str | None:
    """A short description of a file that torch.load refused, or None when nothing is recognized."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "the file is empty"
    if path.suffix == ".onnx" or (
        head[0] == 0x08 and 1 <= head[1] <= 15 and len(head) > 2 and head[2] in _ONNX_FIELDS
    ):
        return f"it looks like an ONNX model; evaluate it with `dfq evaluate {path} --data ...`"
    if head.startswith(b"PK\x03\x04"):
        return (
            None
            if _is_torch_zip(path)
            else ("it is a zip archive but not one torch.save writes (no data.pkl inside)")
        )
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            return what
    text = head.decode("utf-8", errors="ignore")
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        start = text.strip().splitlines()[0] if text.strip() else ""
        shown = start[:20] + ("..." if len(start) > 20 else "")
        return f"it looks like a text file (starts with '{shown}')"
    return None


def _is_torch_zip(path: Path) -> bool:
    """A torch.save archive (perhaps damaged, then torch's own message says more)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") or n == "data.pkl" for n in z.namelist())
    except zipfile.BadZipFile:
        return True


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__
