"""Progress on stderr for long work, so stdout stays clean for `--json`."""
from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import click

T = TypeVar("T")


@contextmanager
def progress(items: Iterable[T], label: str, length: int | None = None,
             enabled: bool = True) -> Iterator[Iterable[T]]:
    """A click progress bar on stderr; `bar.update` is not needed, iterate the yielded object."""
    if not enabled:
        yield items
        return
    with click.progressbar(items, length=length, label=label, file=sys.stderr,
                           show_eta=True, show_pos=True) as bar:
        yield bar


class StepBar:
    """A bar for loops that report losses: `bar.step(n, text)` advances and shows `text`."""

    def __init__(self, total: int, label: str, enabled: bool = True) -> None:
        self.enabled = enabled
        self._bar = None
        if enabled:
            self._bar = click.progressbar(length=total, label=label, file=sys.stderr,
                                          show_pos=True, show_eta=True,
                                          item_show_func=lambda s: s)
            self._bar.__enter__()

    def step(self, n: int = 1, text: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n, text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None

    def __enter__(self) -> StepBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
