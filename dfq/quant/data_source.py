"""Where fine-tuning images come from: a fixed calibration set, or a live source such as DFAD's
generator (anything with `images` and `batch(n, student, teacher, step, gen)`).

Distillation batches from a fixed set hold K classes x M images (M >= 2, by teacher label), so
the student-phase relation loss always has positives, also with 1,000 classes; views are shifted
and flipped, or, with `augment='flip'`, only flipped, so that the teacher's logits for both
orientations can be computed once and cached (a CPU saving at 224 pixels: the teacher's forward
pass is then paid once per image, not once per step). With `stage_names`, the teacher's outputs of
those blocks are cached alongside, for feature distillation (`feature_kd`), and each batch's are in
`stages`.
`low_res_view` makes the smaller copy of a set that distillation's low-resolution steps read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from dfq.models.data_config import low_res_size
from dfq.synth.features import captured_outputs
from dfq.synth.targets import images_per_class

AUGMENTS = ("shift_flip", "flip")


class DataSource(Protocol):
    images: torch.Tensor  # a fixed set for range initialization and reconstruction

    def batch(
        self, n: int, student: nn.Module, teacher: nn.Module, step: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` images and the teacher's logits for them. A source that runs the teacher makes
        its last call on the images it returns (feature distillation reads that call's stage
        outputs instead of running the teacher again); a source with cached logits may hold
        the teacher's stage outputs for the batch in a `stages` dict."""
        ...


def shift_flip(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """A fresh view per image: random shift (reflect padding, crop) and horizontal flip."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    i = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    j = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(x.device)
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * pad))
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = out.gather(3, cols.expand(n, c, h, w))
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def low_res_view(images: torch.Tensor, side: int) -> torch.Tensor | None:
    """`images` resized (antialiased bilinear) so that their longer side is `side`; None when
    `side` is 0 or not below the images' own longer side."""
    size = low_res_size(*images.shape[-2:], side)
    if size is None:
        return None
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=True)


class FixedImages:
    """A calibration set as a data source (see the module docstring)."""

    def __init__(
        self,
        images: torch.Tensor,
        teacher: nn.Module,
        augment: str = "shift_flip",
        per_class: int = 0,
        batch_size: int = 64,
        cache_batch: int = 64,
        stage_names: Sequence[str] = (),
    ) -> None:
        if augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {AUGMENTS}, got {augment!r}")
        self.images, self.augment = images, augment
        self.stages: dict[str, torch.Tensor] = {}
        names = list(stage_names) if augment == "flip" else []
        views = [images, images.flip(3)] if augment == "flip" else [images]
        logits, stages = [], []
        with torch.no_grad(), captured_outputs(teacher, names) as store:
            for view in views:
                parts = [(teacher(x).float(), dict(store)) for x in view.split(cache_batch)]
                logits.append(torch.cat([p[0] for p in parts]))
                stages.append({k: torch.cat([p[1][k] for p in parts]) for k in names})
        self.cached = torch.stack(logits) if augment == "flip" else None
        self._stage_cache = {k: torch.stack([s[k] for s in stages]) for k in names}
        self.labels = logits[0].argmax(1).cpu()
        present = self.labels.unique()
        self.per_class = images_per_class(batch_size, max(1, len(present)), per_class)
        members = [(self.labels == c).nonzero().flatten() for c in present]
        self._counts = torch.tensor([len(m) for m in members])
        self._members = torch.zeros(len(members), int(self._counts.max()), dtype=torch.long)
        for i, m in enumerate(members):
            self._members[i, : len(m)] = m

    def indices(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """K classes x M images by teacher label; a class with fewer than M images repeats some,
        and when there are fewer classes than K, classes are drawn again."""
        m, classes = self.per_class, len(self._counts)
        k = -(-n // m)
        cls = (
            torch.randperm(classes, generator=gen)[:k]
            if classes >= k
            else torch.randint(0, classes, (k,), generator=gen)
        )
        pick = (torch.rand(k, m, generator=gen) * self._counts[cls][:, None]).long()
        return self._members[cls[:, None], pick].flatten()[:n]

    def batch(
        self, n: int, student: nn.Module, teacher: nn.Module, step: int, gen: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.indices(min(n, len(self.images)), gen).to(self.images.device)
        x = self.images[idx]
        if self.cached is not None:
            flip = (torch.rand(len(idx), generator=gen) < 0.5).to(x.device)
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            logits = torch.where(flip[:, None], self.cached[1][idx], self.cached[0][idx])
            self.stages = {
                k: torch.where(flip[:, None, None, None], v[1][idx], v[0][idx])
                for k, v in self._stage_cache.items()
            }
            return x, logits
        x = shift_flip(x, gen)
        with torch.no_grad():
            return x, teacher(x).float()
