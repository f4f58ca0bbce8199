"""The `dfq` Click group: turns DfqError into one line on stderr and its exit status.

SIGTERM, what batch schedulers send before killing a job, is handled like Ctrl-C: it raises
`Terminated` (a KeyboardInterrupt) so the atomic writers remove their temporary output.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import click

from dfq import __version__
from dfq.device import keep_freed_memory
from dfq.errors import DfqError

DEBUG_KEY = "dfq.debug"  # ctx.meta flag, set by --debug before or after the command


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C would be so the same cleanup runs."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises `Terminated`; the previous handler is restored after."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals cannot be handled here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class DfqGroup(click.Group):
    """Turns DfqError into one line on stderr and its exit status; `--debug` keeps the traceback.

    Interrupts print one line, "interrupted", and exit 130 (Ctrl-C) or 143 (SIGTERM), as shells do.
    """

    def invoke(self, ctx: click.Context):
        try:
            with sigterm_as_interrupt():
                return super().invoke(ctx)
        except DfqError as e:
            if ctx.meta.get(DEBUG_KEY):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt as e:
            if ctx.meta.get(DEBUG_KEY):
                raise
            click.echo("interrupted", err=True)
            sys.exit(143 if isinstance(e, Terminated) else 130)


def enable_debug(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Callback of every --debug option: the flag lives in ctx.meta, which nested contexts share."""
    if value:
        ctx.meta[DEBUG_KEY] = True


@click.group(cls=DfqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dfq")
@click.option(
    "--debug",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=enable_debug,
    help="Show full Python tracebacks for errors.",
)
def main() -> None:
    """Data-free quantization of image classifiers.

    Load a pretrained model, synthesize calibration images from the model alone, quantize to
    W4A4 / W8A8, export ONNX, and measure accuracy on real images you have.
    """
    keep_freed_memory()  # torch on CPU: reuse activation memory instead of faulting pages in
