"""Which torch device a run uses, and how many CPU threads: the CLI only reports errors."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dfq.errors import DfqError


def resolve_device(name: str) -> str:
    """'auto' takes a GPU when there is one; 'cuda' without one is a user error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DfqError("no CUDA device is available; use --device cpu")
    return name


@contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Run with `threads` PyTorch intra-op threads (None: leave as is), restored afterwards.

    Two processes that each take every core make each other several times slower; a run on a
    shared machine should take its share.
    """
    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
