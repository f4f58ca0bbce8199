"""`dfq export`: a quantize output directory (QDQ) or a model name (float) to a checked .onnx."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from dfq.cli.group import main
from dfq.cli.options import debug, model_options, open_model, threads, threads_option
from dfq.data import load_images
from dfq.export import ExportConfig, export_onnx, prepare_for_export
from dfq.export.export_config import WEIGHT_TYPES
from dfq.quant.saved import load_quantized

CALIB_NAMES = ("calibration.npz", "calib.npz")


@main.command("export")
@click.argument("target")
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="The .onnx file to write."
)
@model_options
@click.option(
    "--opset",
    type=click.IntRange(13, 21),
    default=13,
    show_default=True,
    help="ONNX opset of the file, 13..21 (13: per-channel QDQ, runs on most runtimes).",
)
@click.option(
    "--int4",
    is_flag=True,
    help="Native INT4 / UINT4 tensors (needs --opset 21; onnxruntime's CPU provider runs "
    "them unfused, so slower than the default).",
)
@click.option(
    "--weight-type",
    type=click.Choice(WEIGHT_TYPES),
    default="auto",
    show_default=True,
    help="Container of the weight codes. int8 runs onnxruntime's U8S8 kernels, which saturate on "
    "x86 CPUs without VNNI; uint8 its U8U8 kernels, exact everywhere but slower where VNNI "
    "exists. auto: uint8 unless this CPU has VNNI or is not x86 (export on the CPU you deploy "
    "on, or choose).",
)
@click.option(
    "--calib",
    type=click.Path(exists=True),
    default=None,
    help="Images for the onnxruntime check (default: the calibration set in TARGET, "
    "else standard-normal images).",
)
@click.option("--no-check", is_flag=True, help="Skip the onnxruntime-vs-PyTorch comparison.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@threads_option
@debug
def export_cmd(
    target, out, weights, pretrained, opset, int4, weight_type, calib, no_check, as_json
) -> None:
    """Write TARGET as ONNX: a `dfq quantize` output directory as QDQ, or a model name as float."""
    cfg = ExportConfig(opset=opset, int4=int4, weight_type=weight_type, check=not no_check)
    quantized = Path(target).exists()
    if quantized:
        if weights or pretrained:
            raise click.UsageError(
                "--weights / --pretrained apply to a model name, not to a quantize output directory"
            )

        model, data_config = load_quantized(target)
    else:
        model, data_config = open_model(target, weights, pretrained)
    images = _calib_images(calib, Path(target) if quantized else None, data_config)
    if quantized:
        prepare_for_export(
            model, images if images is not None else torch.randn(64, *data_config.input_size)
        )
    summary = export_onnx(model, out, cfg, data_config, images, threads=threads())
    if as_json:
        click.echo(json.dumps(summary))
        return
    size = summary["bytes"] / 1e6
    line = f"wrote {out} ({summary['quantization']}, opset {opset}, {size:.2f} MB)"
    if "check" in summary:
        c = summary["check"]
        line += (
            f"; onnxruntime vs PyTorch on {c['images']} images: median deviation "
            f"{c['median_max_dev_steps']:.2f} output steps, argmax agreement "
            f"{100 * c['argmax_agreement']:.1f}%"
        )
    click.echo(line)


def _calib_images(calib: str | None, quant_dir: Path | None, data_config):
    """Normalized images for the check: --calib, else the quantize directory's calibration set."""
    path = Path(calib) if calib else None
    if path is None and quant_dir is not None and quant_dir.is_dir():
        path = next((quant_dir / n for n in CALIB_NAMES if (quant_dir / n).is_file()), None)
    if path is None:
        return None
    images = load_images(path, data_config, limit=256)
    images.check_fits(data_config)
    return images.normalize(images.x, data_config)
