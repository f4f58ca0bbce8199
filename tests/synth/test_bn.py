import pytest
import torch
from torch import nn

from dfq.errors import DfqError
from dfq.synth import SynthConfig, synthesize
from dfq.synth.bn_stats import (
    BNStatHooks,
    bn_stat_loss,
    bn_tail_loss,
    channel_moments,
    require_bn,
)
from tests.synth.tiny import tiny_config, tiny_model


def test_bn_stat_loss_is_zero_on_matching_statistics():
    bn = nn.BatchNorm2d(3).eval()
    bn.running_mean.copy_(torch.tensor([1.0, -1.0, 0.5]))
    bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
    x = torch.randn(4000, 3, 4, 4)
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), unbiased=False, keepdim=True)
    x = x * bn.running_var.sqrt().view(1, 3, 1, 1) + bn.running_mean.view(1, 3, 1, 1)
    assert float(bn_stat_loss(x, bn)) < 1e-4
    assert float(bn_stat_loss(torch.zeros_like(x), bn)) > 1.0


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_channel_moments_match_torch_var_mean_and_their_gradients(layout):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, 7, 9, generator=g) * torch.tensor([0.1, 1.0, 3.0, 0.5, 2.0]).view(
        1, 5, 1, 1
    ) + torch.tensor([0.0, -2.0, 5.0, 0.3, 1.0]).view(1, 5, 1, 1)
    ref = base.clone().requires_grad_(True)
    x = base.clone().contiguous(memory_format=layout).requires_grad_(True)
    mean, var = channel_moments(x)
    want_var, want_mean = torch.var_mean(ref, dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(mean, want_mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, want_var, rtol=1e-4, atol=1e-5)
    w = torch.arange(1.0, 6.0)
    ((mean * w).sum() + (var * w).pow(2).sum()).backward()
    ((want_mean * w).sum() + (want_var * w).pow(2).sum()).backward()
    torch.testing.assert_close(x.grad, ref.grad, rtol=1e-4, atol=1e-5)


def test_bn_loss_falls_under_optimization():
    model = tiny_model()
    x = torch.randn(16, 3, 8, 8, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    with BNStatHooks(model) as hooks:
        losses = []
        for _ in range(40):
            model(x)
            loss = hooks.loss()
            losses.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert losses[-1] < 0.75 * losses[0] and min(losses[-10:]) < min(losses[:10])
    assert not any(m._forward_hooks for m in model.modules())


def test_synthesize_lowers_bn_loss_with_more_steps():
    model, data = tiny_model(), tiny_config()
    short = synthesize(
        model,
        SynthConfig(num_images=16, batch_size=16, iters=1, param="pixels"),
        data,
        progress=False,
    )
    long = synthesize(
        model,
        SynthConfig(num_images=16, batch_size=16, iters=30, param="pixels"),
        data,
        progress=False,
    )
    assert long.metadata["final_losses"]["bn"] < 0.85 * short.metadata["final_losses"]["bn"]


def test_model_without_batchnorm_is_refused_with_advice():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(DfqError, match="no BatchNorm layers.*--calib"):
        require_bn(model)


def test_tail_loss_matches_a_hand_computation():
    bn = nn.BatchNorm2d(1, eps=0.0).eval()
    bn.running_mean.fill_(1.0)
    bn.running_var.fill_(4.0)
    x = torch.tensor([1.0, 11.0, -7.0, 3.0]).view(4, 1, 1, 1)  # z = 0, 5, 4, 1
    # beyond z = 3: excess 2 and 1, squared 4 and 1, averaged over the 4 values
    assert float(bn_tail_loss(x, bn, 3.0)) == pytest.approx(5 / 4)
    assert float(bn_tail_loss(x, bn, 6.0)) == 0.0
    assert float(bn_stat_loss(x, bn, 3.0) - bn_stat_loss(x, bn)) == pytest.approx(5 / 4)


def test_tail_penalty_pulls_in_outliers_that_mean_and_variance_allow():
    """Heavy-tailed activations with the running mean and variance: the statistics loss is
    already ~0 and leaves the tails; with the tail term the outliers shrink, the variance stays."""
    bn = nn.BatchNorm2d(2).eval()
    bn.running_var.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, 8, 8, generator=g) ** 3  # kurtosis ~ 36
    x0 = (x0 - x0.mean((0, 2, 3), keepdim=True)) / x0.std((0, 2, 3), True, keepdim=True)
    shares = {}
    for tail_z in (0.0, 3.0):
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=0.05)
        for _ in range(100):
            loss = bn_stat_loss(x, bn, tail_z)
            opt.zero_grad()
            loss.backward()
            opt.step()
        x = x.detach()
        shares[tail_z] = float((x.abs() > 4).float().mean())
        assert float(x.var((0, 2, 3)).sub(1).abs().max()) < 0.1
    assert shares[0.0] > 0.01 and shares[3.0] < 0.5 * shares[0.0], shares
