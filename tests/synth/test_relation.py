import torch
import torch.nn.functional as F

from dfq.synth import SynthConfig, student_relation_loss, synthesis_relation_loss, synthesize
from dfq.synth.relation import (
    distance_candidates,
    focal_candidates,
    pairwise_distances,
    penultimate_features,
    sample_negatives,
    triplets,
)
from tests.synth.tiny import tiny_config, tiny_model


def _features(n=200, dim=16, classes=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g), torch.arange(n) % classes


def test_focal_sampler_only_picks_in_window_negatives():
    feats, labels = _features(classes=10)
    dist = pairwise_distances(feats)
    log_w, cand = focal_candidates(dist, labels, dim=16, window=(0.5, 1.0))
    a, p, n = triplets(labels, log_w, cand)
    assert len(n) > 0
    assert torch.all((dist[a, n] > 0.5) & (dist[a, n] < 1.0))
    assert torch.all(labels[a] != labels[n]) and torch.all(labels[a] == labels[p])


def test_distance_sampler_keeps_below_cutoff():
    feats, labels = _features(classes=10)
    dist = pairwise_distances(feats)
    log_w, cand = distance_candidates(dist, labels, dim=16)
    a, _, n = triplets(labels, log_w, cand)
    assert len(n) > 0 and torch.all(dist[a, n] < 1.4) and torch.all(labels[a] != labels[n])


def test_hundred_classes_no_nan_even_with_a_near_duplicate():
    feats, labels = _features(n=200, dim=64, classes=100)
    feats[1] = feats[0] + 1e-7  # a near neighbour would underflow a softmax over all candidates
    feats.requires_grad_(True)
    for loss in (synthesis_relation_loss(feats, labels), student_relation_loss(feats, labels)):
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(feats.grad).all()
        feats.grad = None


def test_no_candidate_in_window_gives_zero_loss_not_nan():
    feats = torch.eye(4).repeat_interleave(2, 0).requires_grad_(True)  # all distances 0 or sqrt(2)
    labels = torch.arange(8) // 2
    loss = synthesis_relation_loss(feats, labels)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(feats.grad).all()
    nothing = torch.zeros(8, 8, dtype=torch.bool)
    kept, n = sample_negatives(torch.zeros(8, 8), nothing, torch.arange(8))
    assert not kept.any() and n.numel() == 0


def test_directions_move_features_the_intended_way():
    feats, labels = _features(n=60, dim=8, classes=3, seed=1)
    same = labels[:, None] == labels[None, :]

    def after_steps(direction):
        x = feats.clone().requires_grad_(True)
        opt = torch.optim.SGD([x], lr=0.5)
        for _ in range(30):
            opt.zero_grad()
            synthesis_relation_loss(x, labels, window=(0.0, 2.0), direction=direction).backward()
            opt.step()
        d = pairwise_distances(x.detach())
        return d[same].mean(), d[~same].mean()

    intra_s, inter_s = after_steps("swapped")
    intra_n, inter_n = after_steps("standard")
    assert intra_s > intra_n and inter_s < inter_n


def _penultimate_distances(cfg):
    model, data = tiny_model(num_classes=4, seed=3), tiny_config(num_classes=4)
    model[-1].weight.data *= 5.0  # a confident head: the class prior alone makes clear clusters
    calib = synthesize(model, cfg, data, progress=False)
    with penultimate_features(model) as store, torch.no_grad():
        model(calib.images)
    z = F.normalize(store["features"], dim=1)
    d = torch.cdist(z, z)
    same = calib.labels[:, None] == calib.labels[None, :]
    same_off = same & ~torch.eye(len(z), dtype=torch.bool)
    return d[same_off].mean(), d[~same].mean()


def test_relation_loss_spreads_classes_and_pulls_them_together_vs_bn_only():
    """Swapped-role triplets (the default): classes spread out inside and move closer together."""
    base = dict(num_images=32, batch_size=32, iters=40, method="pixels", relation_labels="target",
                jitter=0, swing=False, seed=0)
    intra_bn, inter_bn = _penultimate_distances(SynthConfig(relation=False, **base))
    rgal = SynthConfig(relation=True, relation_weight=4.0, **base)
    intra_rel, inter_rel = _penultimate_distances(rgal)
    assert intra_rel > intra_bn
    assert inter_rel < inter_bn
