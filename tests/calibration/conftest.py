"""Tiny models run fastest on one thread, especially on a shared machine."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    yield
