"""The three pictures of a run directory: calibration.png, losses.png, layers.png."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from dfq.calibration import CalibrationSet
from dfq.export.fusion import layer_input_quantizers
from dfq.quant.fold import fold_bn
from dfq.run.plots import calibration_grid, class_names, layer_errors, layer_sqnr, loss_curves

SHOWN = 256  # calibration images the grid chooses from
SQNR_IMAGES = 64


@torch.no_grad()
def calibration_picture(calib: CalibrationSet, teacher: nn.Module, name: str, path: Path) -> Path:
    images = calib.images[:SHOWN]
    teacher.eval()
    logits = torch.cat([teacher(x) for x in images.split(64)]).float().cpu()
    dc = calib.data_config
    return calibration_grid(
        images, calib.labels[:SHOWN], dc, logits, class_names(teacher, dc.num_classes, name), path
    )


def loss_picture(calib: CalibrationSet, report: dict, path: Path) -> Path:
    stages = report.get("stages", {})
    history = {
        "synthesize": calib.metadata.get("history") or [],
        "reconstruct": stages.get("reconstruct", {}).get("block_losses") or {},
        "distill": stages.get("distill", {}).get("history") or [],
    }
    return loss_curves(history, path)


def layer_picture(
    qmodel: nn.Module, teacher: nn.Module, images: torch.Tensor, path: Path
) -> tuple[Path, list[dict]]:
    """Per-layer SQNR against the FP model with its BatchNorm folded (same layer names)."""
    fp = copy.deepcopy(teacher).eval()
    fold_bn(fp, images[:2])
    rows = layer_sqnr(qmodel, fp, images[:SQNR_IMAGES])
    feeding = layer_input_quantizers(qmodel, tuple(images.shape[1:]))
    for row in rows:  # a block's entry layer reads its block's input quantizer
        if row.get("abits") is None and row["layer"] in feeding:
            row["abits"] = feeding[row["layer"]].bits
    return layer_errors(rows, path), rows


def write_pictures(
    out: Path, calib: CalibrationSet, teacher: nn.Module, qmodel: nn.Module, report: dict, name: str
) -> dict[str, str]:
    """All three into directory `out`; returns name -> file name, for report.md."""
    calibration_picture(calib, teacher, name, out / "calibration.png")
    loss_picture(calib, report, out / "losses.png")
    _, rows = layer_picture(qmodel, teacher, calib.images, out / "layers.png")
    report["layers"] = rows
    return {"calibration": "calibration.png", "losses": "losses.png", "layers": "layers.png"}
