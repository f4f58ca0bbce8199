"""Progress on stderr for long work, so stdout stays clean for `--json`.

On a terminal: click progress bars. Elsewhere (a log file, a batch job, CI) a bar redraws into
nothing readable, so a plain line is printed about every `interval` seconds instead, with the step,
the caller's current text (losses), the elapsed time and an ETA, and one line when the stage ends.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, TypeVar

import click

if TYPE_CHECKING:
    from typing_extensions import Self

T = TypeVar("T")

DEFAULT_INTERVAL = 30.0  # seconds between log lines when stderr is not a terminal
INTERVAL_ENV = "DFQ_PROGRESS_INTERVAL"

_quiet = False  # process-wide, as `--quiet` is: set once by the CLI, read by every stage


def set_quiet(quiet: bool = True) -> None:
    """Silence every bar and log line (the `--quiet` flag); errors still reach stderr."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def log_interval(interval: float | None = None) -> float:
    """`interval` if given, else $DFQ_PROGRESS_INTERVAL (tests set it small), else 30 s."""
    if interval is not None:
        return float(interval)
    try:
        return float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL


def format_duration(seconds: float) -> str:
    """`45s`, `7m30s`, `1h02m05s`: short enough for a log line, exact enough for an ETA."""
    s = max(0, round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _is_tty(stream: IO) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class LogLines:
    """The non-terminal progress: a plain line every `interval` seconds and one at the end."""

    def __init__(
        self, total: int | None, label: str, interval: float | None = None, stream: IO | None = None
    ) -> None:
        self.total = total
        self.label = label
        self.interval = log_interval(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.pos = 0
        self.text: str | None = None
        self.start = self._last = time.monotonic()
        self.closed = False

    def update(self, n: int = 1, text: str | None = None) -> None:
        self.pos += n
        if text is not None:
            self.text = text
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._write(self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = (now if now is not None else time.monotonic()) - self.start
        step = f"step {self.pos}"
        if self.total:
            step += f"/{self.total} ({100 * self.pos // self.total}%)"
        text = f" {self.text}" if self.text else ""
        timing = f"elapsed {format_duration(elapsed)}"
        if self.total and self.pos > 0:
            eta = elapsed * max(self.total - self.pos, 0) / self.pos
            timing += f", ETA {format_duration(eta)}"
        return f"[{self.label}] {step}{text} | {timing}"

    def finish(self, failed: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        elapsed = format_duration(time.monotonic() - self.start)
        of = f"/{self.total}" if self.total else ""
        word = "stopped at" if failed else "done"
        self._write(f"[{self.label}] {word} {self.pos}{of} in {elapsed}")

    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()


@contextmanager
def progress(
    items: Iterable[T],
    label: str,
    length: int | None = None,
    enabled: bool = True,
    interval: float | None = None,
) -> Iterator[Iterable[T]]:
    """A click progress bar on stderr; `bar.update` is not needed, iterate the yielded object.

    Without a terminal, log lines instead (see `LogLines`); with `set_quiet(True)`, nothing.
    """
    if not enabled or _quiet:
        yield items
        return
    if not _is_tty(sys.stderr):
        total = length if length is not None else _len(items)
        lines = LogLines(total, label, interval)
        try:
            yield _counted(items, lines)
        except BaseException:
            lines.finish(failed=True)
            raise
        lines.finish()
        return
    with click.progressbar(
        items, length=length, label=label, file=sys.stderr, show_eta=True, show_pos=True
    ) as bar:
        yield bar


def _len(items: Iterable) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None


def _counted(items: Iterable[T], lines: LogLines) -> Iterator[T]:
    for item in items:
        yield item
        lines.update(1)


class StepBar:
    """A bar for loops that report losses: `bar.step(n, text)` advances and shows `text`.

    Without a terminal it prints log lines (see `LogLines`); with `set_quiet(True)`, nothing.
    """

    def __init__(
        self, total: int, label: str, enabled: bool = True, interval: float | None = None
    ) -> None:
        self.enabled = enabled and not _quiet
        self._bar = None
        self._lines: LogLines | None = None
        if not self.enabled:
            return
        if not _is_tty(sys.stderr):
            self._lines = LogLines(total, label, interval)
            return
        self._bar = click.progressbar(
            length=total,
            label=label,
            file=sys.stderr,
            show_pos=True,
            show_eta=True,
            item_show_func=lambda s: s,
        )
        self._bar.__enter__()

    def step(self, n: int = 1, text: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n, text)
        elif self._lines is not None:
            self._lines.update(n, text)

    def close(self, failed: bool = False) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
        if self._lines is not None:
            self._lines.finish(failed)
            self._lines = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(failed=exc_type is not None)
