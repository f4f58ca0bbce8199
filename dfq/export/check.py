"""The export check: onnxruntime must compute what the PyTorch (fake-quant) model computes.

The optimized onnxruntime graph runs integer kernels whose requantization rounds a product of scales
once, where PyTorch rounds a float convolution: at near-ties a code moves by one step, and that step
propagates. So the check is stated in output steps, as Brevitas does: the logits' "step" is the grid
an 8-bit per-tensor quantizer would put on them (range / 255). A typical image must agree within
`tolerance` steps, and argmax must agree on nearly all.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dfq.errors import DfqFailure
from dfq.export.export_config import ExportConfig
from dfq.export.runtime import onnx_predictor, open_session, session_options


def output_step(logits: torch.Tensor) -> float:
    """One step of an 8-bit grid over the logits' range: the unit deviations are measured in."""
    return float(logits.max() - logits.min()) / 255 or 1.0


def compare(reference: torch.Tensor, got: torch.Tensor, step: float) -> dict:
    """Deviation statistics in units of `step`, and argmax agreement."""
    dev = (got - reference).abs() / step
    per_image = dev.amax(dim=1)
    return {
        "images": len(reference),
        "step": round(step, 6),
        "median_max_dev_steps": round(float(per_image.median()), 4),
        "max_dev_steps": round(float(per_image.max()), 4),
        "within_tolerance": round(float((per_image <= 1.0).float().mean()), 4),
        "argmax_agreement": round(float((got.argmax(1) == reference.argmax(1)).float().mean()), 4),
    }


def check_against_torch(model: nn.Module, path: str | Path, images: torch.Tensor,
                        cfg: ExportConfig, threads: int | None = None) -> dict:
    """Run both on `images`; raise DfqFailure when they disagree beyond `cfg.tolerance` steps.

    onnxruntime gets `threads` intra-op threads, by default as many as PyTorch uses (what
    `--threads` sets), so the check takes no more of a shared machine than the run it checks.
    """
    was_training = model.training
    model.eval()
    with torch.no_grad():
        reference = model(images.float()).float()
    model.train(was_training)
    threads = threads or torch.get_num_threads()
    got = onnx_predictor(open_session(path, options=session_options(threads)))(images)
    stats = compare(reference, got, output_step(reference))
    typical = stats["median_max_dev_steps"]
    agreement = stats["argmax_agreement"]
    if not np.isfinite(typical) or typical > cfg.tolerance or agreement < cfg.min_agreement:
        raise DfqFailure(
            f"onnxruntime disagrees with PyTorch on {path}: median deviation {typical:.2f} "
            f"output steps "
            f"(allowed {cfg.tolerance}), argmax agreement {100 * agreement:.1f}% "
            f"(needed {100 * cfg.min_agreement:.1f}%)"
        )
    return stats
