"""`dfq evaluate`: accuracy of a model on real images."""

from __future__ import annotations

import json
from pathlib import Path

import click

from dfq.cli.group import main
from dfq.cli.options import (
    debug,
    device,
    model_options,
    open_model,
    resolve_device,
    threads,
    threads_option,
)
from dfq.data import load_images
from dfq.evaluate import evaluate
from dfq.export.export_config import REEXPORT_UINT8
from dfq.export.ort_eval import evaluate_onnx
from dfq.quant.saved import load_quantized


@main.command("evaluate")
@click.argument("target")
@click.option(
    "--data",
    required=True,
    type=click.Path(),
    help="Real labelled images: an .npz with x (uint8 NCHW/NHWC or float in [0, 1]) and y, "
    "or an ImageFolder directory (one sub-folder per class).",
)
@model_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per batch [default: 256, but for a model on CPU about 2**21 pixels, "
    "32 at 224x224 and 256 at 32x32, which runs fastest].",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Use only the first N images."
)
@device
@click.option(
    "--providers",
    default=None,
    help="For an .onnx TARGET: onnxruntime execution providers, comma-separated "
    "(default CPUExecutionProvider).",
)
@click.option(
    "--latency",
    is_flag=True,
    help="For an .onnx TARGET: also measure batch-1 p50/p90 latency and batch-32 throughput.",
)
@click.option(
    "--as-stored",
    is_flag=True,
    help="For an .onnx TARGET with int8 weights on an x86 CPU without VNNI: run the weights as "
    "stored, on onnxruntime's saturating U8S8 kernels (what deploying this file here gives). "
    "Default: score an exact uint8-weight copy (the model as exported).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@threads_option
@debug
def evaluate_cmd(
    target,
    data,
    weights,
    pretrained,
    batch_size,
    limit,
    device,
    providers,
    latency,
    as_stored,
    as_json,
) -> None:
    """Top-1 / top-5 accuracy of TARGET on real images.

    TARGET is a model name (see `dfq models`), a `dfq quantize` output directory (the quantized
    PyTorch model, with the data config it was made with), or an .onnx file (run by onnxruntime).
    """
    if target.endswith(".onnx"):
        _evaluate_onnx(
            target, data, providers, batch_size or 256, limit, latency, as_stored, as_json
        )
        return
    if providers or latency or as_stored:
        raise click.UsageError(
            "--providers, --latency and --as-stored apply to an .onnx TARGET only"
        )
    dev = resolve_device(device)
    if (Path(target) / "quantized.pt").is_file():  # a `dfq quantize` output directory
        model, cfg = load_quantized(target)
    else:
        model, cfg = open_model(target, weights, pretrained)
    images = load_images(data, cfg, limit=limit)
    images.check_fits(cfg, cfg.num_classes)
    result = evaluate(
        model, images, cfg, batch_size=batch_size, device=dev, show_progress=not as_json
    )
    result.update(target=target, data=str(data))
    if as_json:
        click.echo(json.dumps(result))
    else:
        click.echo(
            f"{target}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
            f"({result['n']} images, {result['seconds']:.1f} s)"
        )


def _evaluate_onnx(target, data, providers, batch_size, limit, latency, as_stored, as_json):
    names = [p.strip() for p in providers.split(",") if p.strip()] if providers else None
    result = evaluate_onnx(
        target,
        data,
        names,
        batch_size,
        limit,
        latency,
        show_progress=not as_json,
        threads=threads(),
        as_stored=as_stored,
    )
    result.update(target=target, data=str(data))
    if as_json:
        click.echo(json.dumps(result))
        return
    line = (
        f"{target}: top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  "
        f"({result['n']} images, {result['seconds']:.1f} s, {result['providers'][0]})"
    )
    if result["weights_shifted"]:
        line += (
            f"\n  note: {result['weights_shifted']} int8 weight tensors scored as an exact uint8 "
            "copy: onnxruntime's int8 kernels saturate on this CPU (x86 without VNNI). To deploy "
            f"here, re-export: `{REEXPORT_UINT8}`; "
            "--as-stored measures the file as it is."
        )
    if latency:
        line += (
            f"\n  latency batch 1: p50 {result['latency_ms_p50']:.2f} ms, "
            f"p90 {result['latency_ms_p90']:.2f} ms; "
            f"batch 32: {result['throughput_b32']:.0f} images/s"
        )
    click.echo(line)
