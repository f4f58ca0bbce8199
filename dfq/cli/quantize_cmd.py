"""`dfq quantize`: W4A4 / W8A8 fake quantization fine-tuned by distillation, written to a
directory."""

from __future__ import annotations

from pathlib import Path

import click

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
from dfq.quant.quant_config import PROTOCOLS
from dfq.run.quantize_run import run_quantize
from dfq.run.recipe import quant_config, recipe_choice, synth_config

BITS = click.IntRange(2, 8)


def _first_last(ctx, param, value):
    if value is None or value == "same":
        return value
    try:
        bits = int(value)
    except ValueError:
        bits = 0
    if not 2 <= bits <= 8:
        raise click.BadParameter(f"expected 8 (or another width 2..8) or 'same', got '{value}'")
    return bits


@main.command("quantize")
@click.argument("model_name", metavar="MODEL")
@model_options
@click.option(
    "--bits",
    type=click.Choice(["4", "8"]),
    default=None,
    help="Weights and activations: W4A4 or W8A8.",
)
@click.option("--wbits", type=BITS, default=None, help="Weight bits (with --abits), 2..8.")
@click.option("--abits", type=BITS, default=None, help="Activation bits (with --wbits), 2..8.")
@click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    default=None,
    help="Where tensors are quantized: deploy (what an integer runtime runs; default), "
    "gdfq (the GDFQ / IntraQ / SynQ tables), genie (the Genie / BRECQ / QDrop "
    "tables) [recipe: deploy].",
)
@click.option(
    "--first-last-bits",
    callback=_first_last,
    default=None,
    help="Bits of the first conv and last linear: 8 or 'same' (all layers alike) "
    "[protocol: 8 for deploy and genie, same for gdfq].",
)
@method
@param
@click.option(
    "--calib",
    type=click.Path(),
    default=None,
    help="Existing calibration set (.npz from `dfq synthesize`, real images as .npz or an "
    "ImageFolder); skips synthesis.",
)
@num_images
@recipe
@set_values
@click.option("--out", type=click.Path(), default=None, help="Output directory [MODEL-wWaA].")
@seed
@device
@overwrite
@click.option(
    "--export/--no-export",
    default=True,
    show_default=True,
    help="Also write model.onnx (QDQ, integer kernels), checked against PyTorch.",
)
@click.option(
    "--eval-data",
    type=click.Path(),
    default=None,
    help="Your real labelled images (.npz or ImageFolder): at the end, FP, the quantized "
    "model and model.onnx are measured on them and the kept accuracy is written to "
    "report.json / report.md. Evaluation only: never used for calibration.",
)
@resume
@quiet
@threads_option
@debug
def quantize_cmd(
    model_name,
    weights,
    pretrained,
    bits,
    wbits,
    abits,
    protocol,
    first_last_bits,
    method,
    param,
    calib,
    num_images,
    recipe,
    sets,
    out,
    seed,
    device,
    overwrite,
    export,
    eval_data,
    resume,
) -> None:
    """Quantize MODEL without its training data and fine-tune it by distillation."""
    if bits is not None and (wbits is not None or abits is not None):
        raise click.UsageError("give either --bits or --wbits with --abits, not both")
    if bits is None and (wbits is None) != (abits is None):
        raise click.UsageError("--wbits and --abits go together; give both (or --bits 4|8)")
    if bits is None and wbits is None:
        raise click.UsageError("say how many bits: --bits 4|8, or --wbits W --abits A")
    if bits is not None:
        wbits = abits = int(bits)
    dev = resolve_device(device)
    model, data_config = open_model(model_name, weights, pretrained)
    cfg = quant_config(
        recipe,
        data_config,
        {"wbits": wbits, "abits": abits, "protocol": protocol, "first_last_bits": first_last_bits},
        sets,
        dev,
    )
    scfg = synth_config(
        recipe,
        data_config,
        {"num_images": num_images, "seed": seed, "method": method, "param": param},
        sets,
        dev,
    )
    choice = (
        {"recipe": str(recipe), "reason": "--recipe"} if recipe else recipe_choice(data_config, dev)
    )
    fl = "" if cfg.edge_bits != "same" or cfg.protocol == "gdfq" else "-same"
    fl += "" if cfg.protocol == "deploy" else f"-{cfg.protocol}"
    out = Path(out or f"{model_name.replace(':', '_')}-w{cfg.wbits}a{cfg.abits}{fl}")
    report = run_quantize(
        model,
        model_name,
        data_config,
        cfg,
        out,
        calib=calib,
        synth_cfg=scfg,
        seed=scfg.seed,
        device=dev,
        overwrite=overwrite,
        export=export,
        eval_data=eval_data,
        resume=resume,
        recipe_choice=choice,
    )
    times = " ".join(f"{k} {v['seconds']:.0f}s" for k, v in report["stages"].items())
    click.echo(
        f"{out}: W{cfg.wbits}A{cfg.abits} {model_name}, {report['num_calibration_images']} "
        f"calibration images; {times}; total {report['total_seconds']:.0f} s"
    )
    if report["unquantized_layers"]:
        click.echo("left in float: " + "; ".join(report["unquantized_layers"]))
    acc = report.get("accuracy")
    if acc:
        kept = " ".join(
            f"{k} {acc[k]['top1']:.2f}" for k in ("fp", "quantized", "onnx") if k in acc
        )
        click.echo(
            f"top-1 on {acc['n']} images of {acc['data']}: {kept} "
            f"(drop {acc['quantized_top1_drop']:.2f} points)"
        )
