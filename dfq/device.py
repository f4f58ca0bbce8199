"""Which torch device a run uses (library code resolves it here, the CLI only reports errors),
how many CPU threads it takes, and how a CLI process lets malloc serve torch on CPU."""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from dfq.errors import DfqError


def cpu_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A module's state as CPU copies: what a resume file stores, whatever device it runs on."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


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


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Let glibc malloc keep freed blocks up to `limit` bytes for reuse instead of unmapping them.

    On CPU, torch frees each batch's activations and allocates them again for the next batch. Blocks
    above glibc's mmap threshold (32 MB at most by default) are fresh mappings every time, whose
    pages fault in one by one: tf_efficientnet_lite0 at 224x224, batch 32, one thread, spent 27 ms
    per image in the kernel against 14 in the model; with this, none. Process-wide (freed memory
    stays with the process until it exits), so only entry points such as the CLI call it. Returns
    whether it applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, limit)) and bool(mallopt(m_trim_threshold, limit))
