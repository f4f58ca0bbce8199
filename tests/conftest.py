"""Shared fixtures: the real data and weights in ../shared, skipped with a reason where absent."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_file(rel: str) -> Path:
    """Path of a file in ../shared, or skip the test when it is not there (a user's checkout)."""
    path = SHARED / rel
    if not path.exists():
        pytest.skip(
            f"needs {path} (the project's shared data, present in CI, absent in user checkouts)"
        )
    return path


@pytest.fixture
def resnet20_weights() -> Path:
    return shared_file("models/cifar10-resnet20.th")


@pytest.fixture
def lossless_846() -> Path:
    return shared_file("data/cifar10-test-lossless-846.npz")


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, especially on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
