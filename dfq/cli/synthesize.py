"""`dfq synthesize`: a calibration set from the model alone, saved for dfq or other quantizers."""
from __future__ import annotations

from pathlib import Path

import click

from dfq.cli import main
from dfq.cli.options import device, model_options, resolve_device

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
    from dfq.calibration import FORMATS, save_calibration
    from dfq.calibration.io import write_json
    from dfq.errors import DfqError
    from dfq.models import load_model
    from dfq.synth import synthesize
    from dfq.synth.recipe import synth_config

    if fmt not in FORMATS:
        raise DfqError(f"unknown format '{fmt}'; use one of {', '.join(FORMATS)} (--format)")
    dev = resolve_device(device)
    model, data_config = load_model(model_name, weights=weights, pretrained=pretrained)
    cfg = synth_config(recipe, data_config, dict(
        num_images=num_images, batch_size=batch_size, iters=iters, method=method,
        relation=relation, seed=seed))
    stem = model_name.replace(":", "_")
    out = Path(out or (f"{stem}-calib.npz" if fmt == "npz" else f"{stem}-calib"))
    if out.exists() and not overwrite:
        raise DfqError(f"{out} already exists; choose another --out or pass --overwrite")
    calib = synthesize(model, cfg, data_config, device=dev, model_name=model_name)
    save_calibration(calib, out, fmt, overwrite=overwrite)
    report = out.with_name(out.name + ".report.json")
    write_json({"command": "synthesize", **calib.metadata, "out": str(out), "format": fmt}, report)
    losses = " ".join(f"{k} {v:.4f}" for k, v in calib.metadata["final_losses"].items() if v)
    click.echo(f"{out}: {len(calib)} images ({fmt}) in {calib.metadata['seconds']:.1f} s; {losses}")
