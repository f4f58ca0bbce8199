"""`dfq evaluate`: accuracy of a model on real images."""
from __future__ import annotations

import json

import click

from dfq.cli import main
from dfq.cli.options import device, model_options, open_model, resolve_device


@main.command("evaluate")
@click.argument("target")
@click.option("--data", required=True, type=click.Path(),
              help="Real labelled images: an .npz with x (uint8 NCHW/NHWC or float in [0, 1]) and y, "
                   "or an ImageFolder directory (one sub-folder per class).")
@model_options
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images.")
@device
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def evaluate_cmd(target, data, weights, pretrained, batch_size, limit, device, as_json) -> None:
    """Top-1 / top-5 accuracy of TARGET (a model name) on real images."""
    from dfq.data import load_images
    from dfq.evaluate import evaluate

    dev = resolve_device(device)
    model, cfg = open_model(target, weights, pretrained)
    images = load_images(data, cfg, limit=limit)
    images.check_fits(cfg, cfg.num_classes)
    result = evaluate(model, images, cfg, batch_size=batch_size, device=dev, show_progress=not as_json)
    result.update(target=target, data=str(data))
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(f"{target}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
                   f"({result['n']} images, {result['seconds']:.1f} s)")
