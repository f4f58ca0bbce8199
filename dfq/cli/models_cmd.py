"""`dfq models`: what can be loaded, by source."""

from __future__ import annotations

import click

from dfq.cli.group import main
from dfq.cli.options import debug
from dfq.models import list_models


@main.command("models")
@click.argument("pattern", required=False)
@debug
def models_cmd(pattern: str | None) -> None:
    """List loadable model names by source, optionally filtered by PATTERN (e.g. 'resnet*').

    Bare names are searched in the dfq zoo, then torchvision, then timm; prefix a name with
    'torchvision:' or 'timm:' to pick the source. Your own architecture is named
    'package.module:factory' (a callable returning an nn.Module, importable from the current
    directory), loaded with --weights.
    """
    found = list_models(pattern)
    for source, names in found.items():
        click.echo(f"{source} ({len(names)}):")
        for name in names:
            click.echo(f"  {name}")
    click.echo(
        "custom: package.module:factory (e.g. mymodels:tiny_net --weights w.pth); a TorchScript "
        "or pickled-model file with --trust-checkpoint"
    )
    if not any(found.values()):
        click.echo(f"no model matches '{pattern}'", err=True)
