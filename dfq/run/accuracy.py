"""The accuracy a user kept: FP, quantized PyTorch and the ONNX file on the user's real images.

Evaluation only: these images never reach calibration, fine-tuning or any choice of the run.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dfq.data import load_images
from dfq.evaluate import evaluate
from dfq.export.runtime import onnx_predictor, open_session, session_options
from dfq.models.data_config import DataConfig


def kept_accuracy(
    teacher: nn.Module,
    qmodel: nn.Module,
    onnx_path: Path | None,
    data: str | Path,
    data_config: DataConfig,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Top-1 / top-5 of each, and the drops in points against FP."""
    images = load_images(data, data_config)
    images.check_fits(data_config, data_config.num_classes)
    out: dict = {"data": str(data), "n": len(images)}
    out["fp"] = _short(
        evaluate(teacher, images, data_config, device=device, show_progress=progress)
    )
    out["quantized"] = _short(
        evaluate(qmodel, images, data_config, device=device, show_progress=progress)
    )
    if onnx_path is not None:
        session = open_session(onnx_path, options=session_options(torch.get_num_threads()))
        out["onnx"] = _short(
            evaluate(onnx_predictor(session), images, data_config, show_progress=progress)
        )
    for key in ("quantized", "onnx"):
        if key in out:
            for k in ("top1", "top5"):
                out[f"{key}_{k}_drop"] = round(out["fp"][k] - out[key][k], 2)
    return out


def _short(result: dict) -> dict:
    return {k: result[k] for k in ("top1", "top5", "seconds")}
