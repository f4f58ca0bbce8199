"""`quantize_`: the library entry that quantizes a model in place (what `dfq quantize` runs).

Stages: fold + insert + range init ("prepare"), GPTQ weight rounding (when chosen), block
reconstruction, network distillation, bake.
Each is timed and its losses kept for `report.json`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dfq.quant.data_source import DataSource
from dfq.quant.distill import distill, mean_kd_loss
from dfq.quant.gptq import gptq
from dfq.quant.insert import prepare
from dfq.quant.layers import quant_layers
from dfq.quant.quant_config import QuantConfig
from dfq.quant.quantizer import MIN_SCALE, activation_quantizers, all_quantizers, disabled
from dfq.quant.reconstruct import reconstruct


@contextmanager
def quantizers_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Every quantizer of `model` is the identity inside (the folded FP model); restored on exit."""
    with disabled(all_quantizers(model)):
        yield model


@contextmanager
def _stage(report: dict, name: str) -> Iterator[dict]:
    start = time.perf_counter()
    info: dict[str, Any] = {}
    try:
        yield info
    finally:
        report["stages"][name] = {"seconds": round(time.perf_counter() - start, 3), **info}


def quantize_(
    model: nn.Module,
    cfg: QuantConfig,
    calib: torch.Tensor | DataSource,
    teacher: nn.Module | None = None,
    progress: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Quantize `model` in place on normalized calibration images (N, C, H, W), or on a data
    source whose `images` initialize ranges and drive reconstruction and whose `batch()` feeds
    distillation (e.g. DFAD's generator).

    The FP `teacher` defaults to a copy of `model` taken before quantization. Returns a report:
    per-stage seconds and losses, per-layer bits, folded BN pairs and the layers left in float.
    """
    torch.manual_seed(seed)
    model.eval()
    teacher = (teacher if teacher is not None else copy.deepcopy(model)).eval()
    images = (calib if isinstance(calib, torch.Tensor) else calib.images).float()
    report: dict[str, Any] = {
        "stages": {},
        "num_calibration_images": len(images),
        "protocol": cfg.protocol,
    }
    with _stage(report, "prepare") as info:
        prep = prepare(model, cfg, list(images.split(cfg.calib_batch_size)))
        info["kd_loss"] = round(mean_kd_loss(model, teacher, images, cfg.kd_temperature), 6)
    report.update(
        bits={k: list(v) for k, v in prep.bits.items()},
        folded_bn=len(prep.folded),
        block_inputs=prep.block_inputs,
        activation_quantizers=prep.activations,
        unquantized_layers=prep.unquantized,
        equalized_streams=[
            {"readers": e["readers"], "range_spread": e["range_spread"]} for e in prep.equalized
        ],
        equalized_clips=[
            {"reader": e["reader"], "range_spread": e["range_spread"]} for e in prep.equalized_clips
        ],
    )
    recon = cfg.reconstruct and cfg.recon_iters > 0
    # The folded FP model, every quantizer off: what GPTQ (target "float") and reconstruction aim
    # at. Copied before any weight is rounded.
    fp = _float_copy(model) if recon or cfg.gptq_target == "float" else None
    if cfg.weight_rounding == "gptq":
        with _stage(report, "gptq") as info:
            res = gptq(
                model,
                images,
                cfg.calib_batch_size,
                cfg.gptq_damp,
                cfg.gptq_images,
                progress,
                fp if cfg.gptq_target == "float" else None,
                cfg.gptq_fit_damp,
                cfg.gptq_soft,
                cfg.gptq_active,
            )
            info.update(
                active_layers=res["active_layers"],
                kept_nearest=res["kept_nearest"],
                skipped=res["skipped"],
                unit_losses=_rounded(res["unit_losses"]),
                kd_loss=round(mean_kd_loss(model, teacher, images, cfg.kd_temperature), 6),
            )
    if recon:
        with _stage(report, "reconstruct") as info:
            rec = reconstruct(model, fp, images, cfg, progress)
            info.update(
                skipped=rec["skipped"],
                kept_nearest=rec["kept_nearest"],
                block_losses=_rounded(rec["block_losses"]),
                kd_loss=round(mean_kd_loss(model, teacher, images, cfg.kd_temperature), 6),
            )
    del fp
    if cfg.distills:
        with _stage(report, "distill") as info:
            info.update(distill(model, teacher, calib, cfg, progress, seed))
    elif cfg.kd_iters > 0:
        report["distill_skipped"] = "every layer is 8 bit and kd_at_8bit is false"
    with _stage(report, "bake") as info:
        bake(model)
        info["kd_loss"] = round(mean_kd_loss(model, teacher, images, cfg.kd_temperature), 6)
    return report


def _float_copy(model: nn.Module) -> nn.Module:
    """A copy of the (folded, quantized) `model` with every quantizer off for good."""
    fp = copy.deepcopy(model)
    for q in all_quantizers(fp):
        q.enabled = False
    return fp


def _rounded(losses: dict[str, list[float]]) -> dict[str, list[float]]:
    return {k: [round(v, 6) for v in pair] for k, pair in losses.items()}


@torch.no_grad()
def bake(model: nn.Module) -> None:
    """Fix the quantized weights and keep every step size positive: the model as exported."""
    for layer in quant_layers(model).values():
        layer.bake()
    for q in activation_quantizers(model):
        q.scale.clamp_(min=MIN_SCALE)
    model.requires_grad_(False)
