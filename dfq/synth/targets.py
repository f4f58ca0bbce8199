"""Target labels of a synthetic set: every batch holds K classes x M images (M >= 2).

A triplet needs a positive: two images of one label in the batch. With few classes, cycling the
labels over a random class order gives every batch every class several times. With many classes
(ImageNet: 1,000 classes, batches of 32) that would give no two images of one class, so each batch
takes the next K classes of a running random permutation of all classes, M images each.
"""

from __future__ import annotations

import math

import torch


def images_per_class(batch_size: int, num_classes: int, requested: int = 0) -> int:
    """M: `requested`, or as many as a balanced batch gives (at least 2)."""
    if requested:
        return requested
    return max(2, batch_size // num_classes)


def class_targets(
    n: int, batch_size: int, num_classes: int, per_class: int = 0, seed: int = 0
) -> torch.Tensor:
    """`n` labels, batch after batch of `batch_size`, grouped K classes x M images per batch."""
    gen = torch.Generator().manual_seed(seed)
    m = images_per_class(batch_size, num_classes, per_class)
    if m * num_classes <= batch_size:  # every class fits in every batch: cycle a random order
        order = torch.randperm(num_classes, generator=gen)
        return order[torch.arange(n) % num_classes]
    out, classes = [], torch.empty(0, dtype=torch.long)
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        k = math.ceil(size / m)
        while len(classes) < k:
            classes = torch.cat([classes, torch.randperm(num_classes, generator=gen)])
        take, classes = classes[:k], classes[k:]
        out.append(take.repeat_interleave(m)[:size])
    return torch.cat(out)
