"""Which torch device a run uses: library code resolves it here, the CLI only reports errors."""
from __future__ import annotations

import torch

from dfq.errors import DfqError


def resolve_device(name: str) -> str:
    """'auto' takes a GPU when there is one; 'cuda' without one is a user error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DfqError("no CUDA device is available; use --device cpu")
    return name
