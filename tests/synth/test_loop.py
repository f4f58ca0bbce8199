import math

import pytest
import torch
from torch import nn

from dfq.errors import DfqError, DfqFailure
from dfq.synth import SynthConfig, synthesize
from dfq.synth.inversion import adversarial_loss
from dfq.synth.targets import class_targets
from tests.synth.tiny import tiny_config, tiny_model

FAST = {"num_images": 12, "batch_size": 8, "iters": 3}


@pytest.mark.parametrize("param", ["generator", "pixels"])
def test_images_are_valid_normalized_pixels_with_balanced_labels(param):
    data = tiny_config()
    calib = synthesize(tiny_model(), SynthConfig(param=param, **FAST), data, progress=False)
    lo, hi = data.input_bounds()
    assert calib.images.shape == (12, 3, 8, 8) and calib.images.dtype == torch.float32
    assert torch.all(calib.images >= lo - 1e-5) and torch.all(calib.images <= hi + 1e-5)
    assert torch.bincount(calib.labels, minlength=4).tolist() == [3, 3, 3, 3]
    assert calib.metadata["data_config"]["input_size"] == [3, 8, 8]
    assert calib.metadata["synth"]["param"] == param


def test_same_seed_same_images_other_seed_different():
    model, data = tiny_model(), tiny_config()
    a, b, c = (
        synthesize(model, SynthConfig(seed=s, **FAST), data, progress=False) for s in (1, 1, 2)
    )
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)


def test_model_state_is_restored():
    model = tiny_model().train()
    synthesize(model, SynthConfig(**FAST), tiny_config(), progress=False)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class NaNAtFirst(nn.Module):
    """Returns NaN logits for the first `bad` calls, then behaves."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.net, self.bad, self.calls = tiny_model(), bad, 0

    def forward(self, x):
        self.calls += 1
        out = self.net(x)
        return out * float("nan") if self.calls <= self.bad else out


def test_nan_loss_is_retried_at_lower_lr_then_fails_clearly():
    cfg = SynthConfig(num_images=4, batch_size=4, iters=3, max_retries=2, relation=False)
    calib = synthesize(NaNAtFirst(bad=1), cfg, tiny_config(), progress=False)
    assert torch.isfinite(calib.images).all()
    with pytest.raises(DfqFailure, match="NaN/inf"):
        synthesize(NaNAtFirst(bad=100), cfg, tiny_config(), progress=False)


def test_model_without_batchnorm_is_a_usage_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 4))
    with pytest.raises(DfqError, match="no BatchNorm") as e:
        synthesize(model, SynthConfig(**FAST), tiny_config(), progress=False)
    assert e.value.exit_code == 2


def test_adversarial_term_only_counts_agreeing_samples():
    teacher = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    student = torch.tensor([[1.0, 0.0], [0.0, 4.0]])  # agrees on the first sample only
    only_first = adversarial_loss(teacher[:1], student[:1])
    assert only_first < 0 and torch.isclose(adversarial_loss(teacher, student), only_first)
    # In synthesis: a student that differs from the teacher (and agrees on some samples) gives a
    # strictly negative, finite term; a copy of the teacher gives exactly 0. No swing: it moves the
    # teacher's stride-2 inputs only, so even a copy would see other pixels.
    cfg = SynthConfig(swing=False, **FAST)
    adv = {
        seed: synthesize(
            tiny_model(), cfg, tiny_config(), student=tiny_model(seed=seed), progress=False
        ).metadata["final_losses"]["adv"]
        for seed in (0, 1)
    }
    assert adv[0] == 0.0
    assert math.isfinite(adv[1]) and adv[1] < -1e-3


def test_targets_are_k_classes_by_m_images_cycling_over_all_classes():
    t = class_targets(1024, 32, 1000, per_class=4, seed=0)
    for batch in t.split(32):
        counts = torch.bincount(batch, minlength=1000)
        assert counts.max() >= 4 and set(counts[counts > 0].tolist()) <= {4, 8}
    assert len(set(t.tolist())) >= 250  # 256 class slots drawn from a running permutation
    few = class_targets(24, 12, 4, seed=0)  # every class fits every batch: balanced cycling
    for batch in few.split(12):
        assert torch.bincount(batch, minlength=4).tolist() == [3, 3, 3, 3]


def test_host_sync_interval_does_not_change_the_result():
    """The best batch is tracked on the device; how often the host looks must not matter."""
    model, data = tiny_model(), tiny_config()
    a, b = (
        synthesize(
            model,
            SynthConfig(log_every=k, num_images=8, batch_size=8, iters=7),
            data,
            progress=False,
        )
        for k in (1, 5)
    )
    assert torch.equal(a.images, b.images)
    assert a.metadata["final_losses"] == b.metadata["final_losses"]


def test_bf16_autocast_path_matches_float32():
    """The GPU path (bfloat16 autocast, float32 statistics) lowers the BN loss like float32 does."""
    model, data = tiny_model(), tiny_config()

    def bn_after(iters, amp):
        cfg = SynthConfig(
            amp=amp,
            num_images=8,
            batch_size=8,
            iters=iters,
            relation=False,
            param="pixels",
            keep_best=False,
        )
        calib = synthesize(model, cfg, data, progress=False)
        assert calib.images.dtype == torch.float32
        return calib.metadata["final_losses"]["bn"]

    start, fp32, bf16 = bn_after(1, "bf16"), bn_after(40, "off"), bn_after(40, "bf16")
    assert bf16 < 0.85 * start
    assert bf16 == pytest.approx(fp32, rel=0.02)
