"""Top-1 / top-5 accuracy of a model on real images."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn

from dfq.data.images import ImageSet
from dfq.errors import DfqError
from dfq.models.data_config import DataConfig
from dfq.progress import progress

Predictor = Callable[[torch.Tensor], torch.Tensor]


def torch_predictor(model: nn.Module, device: str | torch.device = "cpu") -> Predictor:
    """Wrap an nn.Module as a batch -> logits function (eval mode, no grad)."""
    model.eval().to(device)

    @torch.inference_mode()
    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)).float().cpu()

    return predict


def default_batch_size(cfg: DataConfig, device: str | torch.device = "cpu") -> int:
    """256 images per batch on an accelerator; on CPU, a power of two near 2**21 input pixels.

    That is 256 at 32x32 but 32 at 224x224. Bigger batches are no faster per image on CPU, and at
    ImageNet sizes slower: their activations outgrow what malloc keeps for reuse, so each batch
    faults in fresh pages (tf_efficientnet_lite0, one thread, with `keep_freed_memory`: 12 ms of
    user and 0 of kernel time per image at batch 32; 13 and 7 at batch 64; 13 and 29 at batch 256).
    """
    if torch.device(device).type != "cpu":
        return 256
    _, h, w = cfg.input_size
    return 1 << min(8, max(0, (2**21 // (h * w)).bit_length() - 1))


def evaluate(
    target: nn.Module | Predictor,
    data: ImageSet,
    cfg: DataConfig,
    batch_size: int | None = None,
    device: str | torch.device = "cpu",
    show_progress: bool = True,
) -> dict:
    """Accuracy of `target` (a model, or a function from normalized batch to logits) on `data`.

    `batch_size` defaults to `default_batch_size(cfg, device)`. Returns `top1`, `top5` (percent),
    `n` and `seconds` (inference wall time, data included).
    """
    batch_size = batch_size or default_batch_size(cfg, device)
    predict = torch_predictor(target, device) if isinstance(target, nn.Module) else target
    if data.y is None:
        raise DfqError(f"{data.source}: no labels (array 'y'), so accuracy cannot be measured")
    correct1 = correct5 = 0
    start = time.perf_counter()
    n_batches = (len(data) + batch_size - 1) // batch_size
    with progress(data.batches(cfg, batch_size), "evaluate", n_batches, show_progress) as it:
        for x, y in it:
            logits = predict(x)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            correct1 += int((top[:, 0] == y).sum())
            correct5 += int((top == y[:, None]).any(dim=1).sum())
    seconds = time.perf_counter() - start
    n = len(data)
    return {
        "top1": round(100.0 * correct1 / n, 2),
        "top5": round(100.0 * correct5 / n, 2),
        "n": n,
        "seconds": round(seconds, 3),
    }
