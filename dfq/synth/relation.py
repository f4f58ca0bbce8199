"""RGAL relation losses: triplets on features, negatives sampled by distances between logits.

As in RGAL's released code, the distances that choose negatives are those between L2-normalized
logits (dimension = number of classes), and the hinge is applied to L2-normalized pooled features:
the model's stage outputs in synthesis (summed over stages), the penultimate vector for the student.

Synthesis (DESIGN.md section 1, item 3): *focal weighted* sampling inside a distance window and, by
default, the roles swapped (positive pushed away, negative pulled closer), so images of one class
spread out and classes move closer without collapsing. Student phase (section 3): the standard
triplet with *distance weighted* sampling (Wu et al. 2017).

Both samplers weight a candidate negative by the inverse density of distances between random
points on the unit sphere of the logits' dimension, restricted to a window. On wide vectors that
density is so steep that the nearest in-window candidate would take every pick (at 1,000 classes a
factor of 2^838 across the window), so the weights are capped at `ratio` times the smallest
in-window weight of the anchor (Wu et al. clip the weighting for the same reason): picks spread over
the window at any dimension. Everything is computed with fixed shapes (masks, no `nonzero`), so a
GPU never waits for the host inside a synthesis or distillation step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

FOCAL_WINDOW = (0.5, 1.0)
DISTANCE_WINDOW = (0.0, 1.4)  # distance weighted sampling: any negative closer than the cutoff
DISTANCE_CLAMP = 0.5
DENSITY_RATIO = 10.0


def pairwise_distances(features: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between L2-normalized rows, with a gradient that stays finite at zero."""
    z = F.normalize(features.float().flatten(1), dim=1)
    sq = (2.0 - 2.0 * z @ z.T).clamp(min=1e-12)
    return sq.sqrt()


def log_inverse_density(dist: torch.Tensor, dim: int) -> torch.Tensor:
    """log(1 / q(d)) up to a constant, q the density of distances between random points on the
    unit sphere in R^dim: q(d) ~ d^(dim-2) (1 - d^2/4)^((dim-3)/2)."""
    d = dist.clamp(min=1e-6, max=2.0 - 1e-6)
    return (2.0 - dim) * d.log() - ((dim - 3) / 2.0) * (1.0 - d.pow(2) / 4.0).clamp(min=1e-12).log()


def sample_triplets(
    logits: torch.Tensor,
    labels: torch.Tensor,
    window: tuple[float, float],
    clamp: float = 0.0,
    ratio: float = DENSITY_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every ordered same-label pair (a, p), one negative n drawn by its anchor's weights.

    Returns `neg` (B, B) with neg[a, p] = n, and `mask` (B, B): the pairs that form a triplet
    (same label, a != p, the anchor has an in-window candidate).
    """
    with torch.no_grad():
        dist = pairwise_distances(logits.detach())
        probs, kept = negative_weights(
            dist, labels, logits.flatten(1).shape[1], window, clamp, ratio
        )
        neg = torch.multinomial(probs, len(labels), replacement=True)
        same = labels[:, None] == labels[None, :]
        same.fill_diagonal_(False)
    return neg, same & kept[:, None]


def negative_weights(
    dist: torch.Tensor,
    labels: torch.Tensor,
    dim: int,
    window: tuple[float, float],
    clamp: float = 0.0,
    ratio: float = DENSITY_RATIO,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling probabilities (B, B) over negatives per anchor row, and which rows have any.

    Candidates: another label and lo < d < hi. Weight: inverse sphere density (dimension `dim`) of
    max(d, clamp), capped at `ratio` times the row's smallest candidate weight.
    """
    lo, hi = window
    cand = (labels[:, None] != labels[None, :]) & (dist > lo) & (dist < hi)
    log_w = log_inverse_density(dist.clamp(min=clamp), dim)
    floor = log_w.masked_fill(~cand, float("inf")).amin(dim=1, keepdim=True)
    log_w = torch.minimum(log_w, floor + math.log(ratio))
    kept = cand.any(dim=1)
    log_w = log_w.masked_fill(~cand, float("-inf"))
    log_w = torch.where(kept[:, None], log_w, torch.zeros_like(log_w))  # a valid dummy row
    return torch.softmax(log_w, dim=1), kept


def triplet_hinge(
    features: torch.Tensor, neg: torch.Tensor, mask: torch.Tensor, margin: float, swapped: bool
) -> torch.Tensor:
    """Mean hinge over the masked triplets; `swapped` pushes the positive away, pulls the negative
    in. Zero (with a gradient path) when there is no triplet."""
    dist = pairwise_distances(features)
    d_ap, d_an = dist, dist.gather(1, neg)
    gap = d_an - d_ap if swapped else d_ap - d_an
    m = mask.to(dist.dtype)
    return (F.relu(gap + margin) * m).sum() / m.sum().clamp(min=1.0)


def synthesis_relation_loss(
    features: list[torch.Tensor] | torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    window: tuple[float, float] = FOCAL_WINDOW,
    direction: str = "swapped",
    ratio: float = DENSITY_RATIO,
) -> torch.Tensor:
    """RGAL synthesis-phase loss: focal weighted negatives, hinge summed over feature layers."""
    neg, mask = sample_triplets(logits, labels, window, ratio=ratio)
    layers = features if isinstance(features, (list, tuple)) else [features]
    return sum(triplet_hinge(pooled(f), neg, mask, margin, direction == "swapped") for f in layers)


def student_relation_loss(
    features: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    ratio: float = DENSITY_RATIO,
) -> torch.Tensor:
    """RGAL student-phase loss: standard triplet (pull same label together, push others apart),
    distance weighted negatives (distance clamped at 0.5, below the 1.4 cutoff)."""
    neg, mask = sample_triplets(logits, labels, DISTANCE_WINDOW, clamp=DISTANCE_CLAMP, ratio=ratio)
    return triplet_hinge(pooled(features), neg, mask, margin, swapped=False)


def pooled(x: torch.Tensor) -> torch.Tensor:
    """Global-average-pooled (N, C) features of a 4-D map; other shapes flattened."""
    return x.float().mean(dim=(2, 3)) if x.dim() == 4 else x.float().flatten(1)
