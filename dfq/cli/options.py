"""Options shared by several commands."""
from __future__ import annotations

import click

model_weights = click.option(
    "--weights", type=click.Path(dir_okay=False), default=None,
    help="Checkpoint to load: a state dict, or a dict holding one under 'state_dict' or 'model'.",
)
model_pretrained = click.option(
    "--pretrained/--no-pretrained", default=None,
    help="Use the published weights from the torch.hub / Hugging Face cache (default when no "
         "--weights is given); --no-pretrained gives random weights.",
)
device = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
    help="Where to run: 'auto' takes a GPU when there is one.",
)


def model_options(f):
    return model_weights(model_pretrained(f))


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise click.BadParameter("no CUDA device is available; use --device cpu", param_hint="--device")
    return name
