"""RGAL relation losses: triplets on penultimate features, with the two negative samplers.

Synthesis (DESIGN.md section 1, item 3): `synthesis_relation_loss` with *focal weighted* sampling in
a distance window and, by default, the roles swapped (positive pushed away, negative pulled closer)
so that images of one class spread out and classes move closer (within the window, so
they never collapse). Student phase (section 3):
`student_relation_loss`, the standard triplet with *distance weighted* sampling (Wu et al. 2017).

Both samplers weight a candidate negative by the inverse density of distances between random points
on the unit sphere of dimension d, restricted to a window; the softmax runs over in-window
candidates only, so a near neighbour outside the window never underflows every other weight to zero
(100 classes included).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from dfq.errors import DfqError

FOCAL_WINDOW = (0.5, 1.0)
DISTANCE_CLAMP = 0.5
DISTANCE_CUTOFF = 1.4


def pairwise_distances(features: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between L2-normalized rows, with a gradient that stays finite at zero."""
    z = F.normalize(features.float().flatten(1), dim=1)
    sq = (2.0 - 2.0 * z @ z.T).clamp(min=1e-12)
    return sq.sqrt()


def log_inverse_density(dist: torch.Tensor, dim: int) -> torch.Tensor:
    """log(1 / q(d)), q the density of distances between random points on the sphere in R^dim."""
    d = dist.clamp(min=1e-6, max=2.0 - 1e-6)
    return (2.0 - dim) * d.log() - ((dim - 3) / 2.0) * (1.0 - d.pow(2) / 4.0).clamp(min=1e-12).log()


def focal_candidates(
    dist: torch.Tensor, labels: torch.Tensor, dim: int, window: tuple[float, float] = FOCAL_WINDOW
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-weights and candidate mask of the focal sampler: other label, lo < d < hi."""
    lo, hi = window
    other = labels[:, None] != labels[None, :]
    return log_inverse_density(dist, dim), other & (dist > lo) & (dist < hi)


def distance_candidates(dist: torch.Tensor, labels: torch.Tensor, dim: int,
                        clamp: float = DISTANCE_CLAMP,
                        cutoff: float = DISTANCE_CUTOFF) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-weights and candidates of distance weighted sampling: d clamped >= clamp, d < cutoff."""
    other = labels[:, None] != labels[None, :]
    return log_inverse_density(dist.clamp(min=clamp), dim), other & (dist < cutoff)


def sample_negatives(log_w: torch.Tensor, candidates: torch.Tensor,
                     anchors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One negative per anchor index, drawn from the softmax of `log_w` over its candidates only.

    Returns (kept, negatives): which anchors had any candidate, and the drawn index for those.
    """
    cand = candidates[anchors]
    kept = cand.any(dim=1)
    logits = log_w[anchors][kept].masked_fill(~cand[kept], float("-inf"))
    if logits.numel() == 0:
        return kept, torch.empty(0, dtype=torch.long, device=log_w.device)
    probs = torch.softmax(logits, dim=1)  # subtracts the in-window maximum: no all-zero row
    return kept, torch.multinomial(probs, 1).squeeze(1)


def triplets(labels: torch.Tensor, log_w: torch.Tensor,
             candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(anchor, positive, negative) indices: every same-label pair, one sampled negative each."""
    same = labels[:, None] == labels[None, :]
    same.fill_diagonal_(False)
    a, p = same.nonzero(as_tuple=True)
    kept, n = sample_negatives(log_w, candidates, a)
    return a[kept], p[kept], n


def triplet_hinge(dist: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor,
                  margin: float, swapped: bool) -> torch.Tensor:
    """Mean hinge; `swapped` pushes the positive away and pulls the negative in."""
    if a.numel() == 0:
        return dist.sum() * 0.0
    d_ap, d_an = dist[a, p], dist[a, n]
    gap = d_an - d_ap if swapped else d_ap - d_an
    return F.relu(gap + margin).mean()


def synthesis_relation_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.2,
                            window: tuple[float, float] = FOCAL_WINDOW,
                            direction: str = "swapped") -> torch.Tensor:
    """RGAL synthesis-phase triplet loss with focal weighted negatives (see module docstring)."""
    dist = pairwise_distances(features)
    with torch.no_grad():
        log_w, cand = focal_candidates(dist.detach(), labels, features.flatten(1).shape[1], window)
    a, p, n = triplets(labels, log_w, cand)
    return triplet_hinge(dist, a, p, n, margin, swapped=direction == "swapped")


def student_relation_loss(features: torch.Tensor, labels: torch.Tensor,
                          margin: float = 0.2) -> torch.Tensor:
    """RGAL student-phase loss: standard triplet (pull same label, push others apart).

    Negatives by distance weighted sampling; features are L2-normalized here.
    """
    dist = pairwise_distances(features)
    with torch.no_grad():
        log_w, cand = distance_candidates(dist.detach(), labels, features.flatten(1).shape[1])
    a, p, n = triplets(labels, log_w, cand)
    return triplet_hinge(dist, a, p, n, margin, swapped=False)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier layer, whose input is the penultimate feature vector."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DfqError("the model has no final Linear layer to take penultimate features from; "
                       "turn the relation loss off (--no-relation)")
    return linears[-1]


@contextmanager
def penultimate_features(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the classifier's input on each forward pass under key 'features' (flattened)."""
    store: dict[str, torch.Tensor] = {}

    def hook(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        store["features"] = inputs[0].flatten(1)

    handle = last_linear(model).register_forward_pre_hook(hook)
    try:
        yield store
    finally:
        handle.remove()
