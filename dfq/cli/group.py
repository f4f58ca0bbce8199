"""The `dfq` Click group: turns DfqError into one line on stderr and its exit status."""
from __future__ import annotations

import sys

import click

from dfq import __version__
from dfq.errors import DfqError


class DfqGroup(click.Group):
    """Turns DfqError into one line on stderr and its exit status; `--debug` keeps the traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DfqError as e:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            if ctx.params.get("debug"):
                raise
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=DfqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dfq")
@click.option("--debug", is_flag=True, help="Show full Python tracebacks for errors.")
def main(debug: bool) -> None:
    """Data-free quantization of image classifiers.

    Load a pretrained model, synthesize calibration images from the model alone, quantize to
    W4A4 / W8A8, export ONNX, and measure accuracy on real images you have.
    """
