"""`dfq synthesize`: a calibration set from the model alone, saved for dfq or other quantizers."""

from __future__ import annotations

from pathlib import Path

import click

from dfq.calibration import FORMATS
from dfq.cli.group import main
from dfq.cli.options import (
    debug,
    device,
    method,
    model_options,
    num_images,
    open_model,
    overwrite,
    param,
    quiet,
    recipe,
    resolve_device,
    resume,
    seed,
    set_values,
    threads_option,
)
from dfq.run.recipe import synth_config
from dfq.run.synthesize_run import default_output, run_synthesize

FORMAT_HELP = "npz (float32 NCHW, normalized), png (ImageFolder + dfq_calibration.json), onnx-pb."


@main.command("synthesize")
@click.argument("model_name", metavar="MODEL")
@model_options
@num_images
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images optimized together [recipe].",
)
@click.option("--iters", type=int, default=None, help="Optimizer steps per batch [recipe].")
@method
@param
@click.option("--relation/--no-relation", default=None, help="RGAL relation loss [recipe: on].")
@recipe
@set_values
@click.option(
    "--out",
    type=click.Path(),
    default=None,
    help="Output path [MODEL-calib.npz, or MODEL-calib/ for directory formats].",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="npz",
    show_default=True,
    help=FORMAT_HELP,
)
@seed
@device
@overwrite
@resume
@quiet
@threads_option
@debug
def synthesize_cmd(
    model_name,
    weights,
    pretrained,
    num_images,
    batch_size,
    iters,
    method,
    param,
    relation,
    recipe,
    sets,
    out,
    fmt,
    seed,
    device,
    overwrite,
    resume,
) -> None:
    """Synthesize calibration images for MODEL from its BatchNorm statistics (no data needed)."""
    dev = resolve_device(device)
    model, data_config = open_model(model_name, weights, pretrained)
    cfg = synth_config(
        recipe,
        data_config,
        {
            "num_images": num_images,
            "batch_size": batch_size,
            "iters": iters,
            "method": method,
            "param": param,
            "relation": relation,
            "seed": seed,
        },
        sets,
        dev,
    )
    out = Path(out) if out else default_output(model_name, fmt)
    calib = run_synthesize(
        model, model_name, data_config, cfg, out, fmt, dev, overwrite, resume=resume
    )
    losses = " ".join(f"{k} {v:.4f}" for k, v in calib.metadata["final_losses"].items() if v)
    click.echo(f"{out}: {len(calib)} images ({fmt}) in {calib.metadata['seconds']:.1f} s; {losses}")
