"""`dfq synthesize`: a calibration set from the model alone, saved for dfq or other quantizers."""
from __future__ import annotations

from pathlib import Path

import click

from dfq.cli.group import main
from dfq.cli.options import device, model_options, open_model, resolve_device
from dfq.run.recipe import synth_config
from dfq.run.synthesize_run import default_output, run_synthesize

FORMAT_HELP = "npz (float32 NCHW, normalized), png (ImageFolder + dfq_calibration.json), onnx-pb."


@main.command("synthesize")
@click.argument("model_name", metavar="MODEL")
@model_options
@click.option("-n", "--num-images", type=int, default=None, help="Images to synthesize [recipe].")
@click.option("--batch-size", type=int, default=None, help="Images optimized together [recipe].")
@click.option("--iters", type=int, default=None, help="Optimizer steps per batch [recipe].")
@click.option("--method", default=None, help="generator (default) or pixels [recipe].")
@click.option("--relation/--no-relation", default=None, help="RGAL relation loss [recipe: on].")
@click.option("--recipe", default=None,
              help="Recipe name (cifar, imagenet) or YAML file; default by input size.")
@click.option("--out", type=click.Path(), default=None,
              help="Output path [MODEL-calib.npz, or MODEL-calib/ for directory formats].")
@click.option("--format", "fmt", default="npz", show_default=True, help=FORMAT_HELP)
@click.option("--seed", type=int, default=None,
              help="Random seed: same seed, same device, same images [recipe].")
@device
@click.option("--overwrite", is_flag=True, help="Replace an existing --out.")
def synthesize_cmd(model_name, weights, pretrained, num_images, batch_size, iters, method, relation,
                   recipe, out, fmt, seed, device, overwrite) -> None:
    """Synthesize calibration images for MODEL from its BatchNorm statistics (no data needed)."""
    dev = resolve_device(device)
    model, data_config = open_model(model_name, weights, pretrained)
    cfg = synth_config(recipe, data_config, dict(
        num_images=num_images, batch_size=batch_size, iters=iters, method=method,
        relation=relation, seed=seed))
    out = Path(out) if out else default_output(model_name, fmt)
    calib = run_synthesize(model, model_name, data_config, cfg, out, fmt, dev, overwrite)
    losses = " ".join(f"{k} {v:.4f}" for k, v in calib.metadata["final_losses"].items() if v)
    click.echo(f"{out}: {len(calib)} images ({fmt}) in {calib.metadata['seconds']:.1f} s; {losses}")
