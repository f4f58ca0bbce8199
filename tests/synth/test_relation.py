import math

import pytest
import torch

from dfq.synth.relation import (
    DENSITY_RATIO,
    FOCAL_WINDOW,
    negative_weights,
    pairwise_distances,
    sample_triplets,
    student_relation_loss,
    synthesis_relation_loss,
)


def _features(n=200, dim=16, classes=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.arange(n) % classes


def _triplet_indices(neg, mask):
    a, p = mask.nonzero(as_tuple=True)
    return a, p, neg[a, p]


def test_focal_sampler_only_picks_in_window_negatives():
    logits, labels = _features(classes=10)
    neg, mask = sample_triplets(logits, labels, window=(0.5, 1.0))
    a, p, n = _triplet_indices(neg, mask)
    dist = pairwise_distances(logits)
    assert len(n) > 0
    assert torch.all((dist[a, n] > 0.5) & (dist[a, n] < 1.0))
    assert torch.all(labels[a] != labels[n]) and torch.all(labels[a] == labels[p])


def test_distance_sampler_keeps_below_cutoff():
    logits, labels = _features(classes=10)
    neg, mask = sample_triplets(logits, labels, window=(0.0, 1.4), clamp=0.5)
    a, _, n = _triplet_indices(neg, mask)
    dist = pairwise_distances(logits)
    assert len(n) > 0 and torch.all(dist[a, n] < 1.4) and torch.all(labels[a] != labels[n])


def _anchor_with_negatives_across_the_window(dim, n=400, seed=0):
    """An anchor (row 0) and `n` other-label vectors whose distances to it spread evenly over
    the focal window."""
    g = torch.Generator().manual_seed(seed)
    e1 = torch.zeros(dim)
    e1[0] = 1.0
    lo, hi = FOCAL_WINDOW
    d = torch.linspace(lo + 0.01, hi - 0.01, n)
    cos = 1 - d.pow(2) / 2
    u = torch.randn(n, dim, generator=g)
    u[:, 0] = 0
    u = u / u.norm(dim=1, keepdim=True)
    others = cos[:, None] * e1 + (1 - cos.pow(2)).sqrt()[:, None] * u
    vectors = torch.cat([e1[None], others])
    labels = torch.cat([torch.zeros(1, dtype=torch.long), torch.arange(1, n + 1)])
    return vectors, labels


@pytest.mark.parametrize("dim", [10, 1000])
def test_sampled_negatives_spread_over_the_window(dim):
    """At the default settings (focal window, density ratio) picks do not collapse onto the
    nearest in-window negative, on vectors as narrow as CIFAR-10 logits or as wide as ImageNet's."""
    vectors, labels = _anchor_with_negatives_across_the_window(dim)
    dist = pairwise_distances(vectors)
    probs, kept = negative_weights(dist, labels, dim, FOCAL_WINDOW, ratio=DENSITY_RATIO)
    assert kept[0]
    picks = torch.multinomial(
        probs[0], 5000, replacement=True, generator=torch.Generator().manual_seed(1)
    )
    share = torch.histc(dist[0, picks], bins=5, min=FOCAL_WINDOW[0], max=FOCAL_WINDOW[1]) / 5000
    assert (share > 0.05).sum() >= 4, share
    assert share.max() < 0.5, share
    # Closer negatives are never less likely than farther ones (the inverse-density direction).
    assert share[0] >= share[-1]


def test_uncapped_inverse_density_would_collapse_at_1000_dimensions():
    """Why the cap exists: without it nearly every pick is in the nearest distance bin."""
    vectors, labels = _anchor_with_negatives_across_the_window(1000)
    dist = pairwise_distances(vectors)
    probs, _ = negative_weights(dist, labels, 1000, FOCAL_WINDOW, ratio=1e300)
    assert probs[0, 1:11].sum() > 0.99  # the ten nearest candidates take it all


def test_near_duplicates_and_hundred_classes_stay_finite():
    feats, labels = _features(n=200, dim=64, classes=100)
    logits, _ = _features(n=200, dim=100, classes=100, seed=1)
    feats[1] = feats[0] + 1e-7
    feats.requires_grad_(True)
    for loss in (
        synthesis_relation_loss(feats, logits, labels),
        student_relation_loss(feats, logits, labels),
    ):
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
        feats.grad = None


def test_no_candidate_in_window_gives_zero_loss_not_nan():
    feats = torch.eye(4).repeat_interleave(2, 0).requires_grad_(True)  # distances 0 or sqrt(2)
    labels = torch.arange(8) // 2
    loss = synthesis_relation_loss(feats, feats.detach(), labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(feats.grad).all()
    _, mask = sample_triplets(feats.detach(), labels, FOCAL_WINDOW)
    assert not mask.any()


def test_directions_move_features_the_intended_way():
    feats, labels = _features(n=60, dim=8, classes=3, seed=1)
    same = labels[:, None] == labels[None, :]

    def after_steps(direction):
        x = feats.clone().requires_grad_(True)
        opt = torch.optim.SGD([x], lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            synthesis_relation_loss(
                x, x.detach(), labels, window=(0.0, 2.0), direction=direction
            ).backward()
            opt.step()
        d = pairwise_distances(x.detach())
        return d[same].mean(), d[~same].mean()

    intra_s, inter_s = after_steps("swapped")
    intra_n, inter_n = after_steps("standard")
    assert intra_s > intra_n and inter_s < inter_n


def test_loss_sums_over_feature_layers_and_pools_maps():
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(12, 4, 3, 3, generator=g), torch.randn(12, 6, 2, 2, generator=g)]
    logits, labels = torch.randn(12, 5, generator=g), torch.arange(12) % 3
    torch.manual_seed(0)
    both = synthesis_relation_loss(maps, logits, labels, window=(0.0, 2.0))
    torch.manual_seed(0)
    first = synthesis_relation_loss(maps[:1], logits, labels, window=(0.0, 2.0))
    torch.manual_seed(0)
    second = synthesis_relation_loss(maps[1:], logits, labels, window=(0.0, 2.0))
    assert math.isclose(float(both), float(first) + float(second), rel_tol=1e-5)
