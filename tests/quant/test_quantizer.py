import pytest
import torch

from dfq.quant.quantizer import Quantizer, fake_quant


def test_signed_4bit_levels_clipping_and_zero_point():
    q = Quantizer(4, signed=True)
    q.set_scale(0.5)
    assert (q.qmin, q.qmax) == (-8, 7)
    x = torch.tensor([-10.0, -4.0, -1.3, -0.2, 0.0, 0.24, 0.26, 1.6, 3.5, 3.74, 9.0])
    # by hand: x / 0.5 rounded, clamped to [-8, 7], times 0.5
    want = torch.tensor([-4.0, -4.0, -1.5, 0.0, 0.0, 0.0, 0.5, 1.5, 3.5, 3.5, 3.5])
    assert torch.equal(q(x), want)
    assert q(torch.zeros(1)).detach().item() == 0.0  # zero point 0: zero is exact


def test_unsigned_grid_starts_at_zero():
    q = Quantizer(2, signed=False)
    q.set_scale(1.0)
    assert (q.qmin, q.qmax) == (0, 3)
    x = torch.tensor([-2.0, 0.4, 0.6, 2.5, 7.0])
    assert torch.equal(q(x), torch.tensor([0.0, 0.0, 1.0, 2.0, 3.0]))


def test_8bit_ranges_and_levels():
    s, u = Quantizer(8, True), Quantizer(8, False)
    assert (s.qmin, s.qmax, u.qmin, u.qmax) == (-128, 127, 0, 255)
    s.set_scale(0.1)
    x = torch.linspace(-20, 20, 10001)
    assert len(torch.unique(s(x))) == 256


def test_per_channel_scales_apply_along_axis_0():
    q = Quantizer(4, True, channel_axis=0, num_channels=2)
    assert q.scale.shape == (2,)
    q.set_scale(torch.tensor([1.0, 0.1]))
    w = torch.tensor([[[0.34]], [[0.34]]])
    out = q(w).flatten()
    assert torch.allclose(out, torch.tensor([0.0, 0.3]))


def test_disabled_is_identity_and_scale_is_a_scalar_per_tensor():
    q = Quantizer(4, True)
    assert q.scale.shape == ()
    q.enabled = False
    x = torch.randn(5)
    assert torch.equal(q(x), x)


def test_ste_and_lsq_gradients():
    q = Quantizer(4, True)
    q.set_scale(1.0)
    x = torch.tensor([0.3, 0.6, 20.0], requires_grad=True)
    q(x).sum().backward()
    assert torch.equal(
        x.grad, torch.tensor([1.0, 1.0, 0.0])
    )  # STE inside the range, 0 when clipped
    # LSQ: d q / d s = round(x/s) - x/s inside, qmax when clipped, times g = 1 / sqrt(N * qmax)
    g = 1.0 / (3 * 7) ** 0.5
    want = ((0 - 0.3) + (1 - 0.6) + 7) * g
    assert q.scale.grad.item() == pytest.approx(want, rel=1e-5)


def _autograd_reference(x, s, qmin, qmax, factor):
    """LSQ as autograd: clip, round straight through, step-size gradient scaled by factor."""
    s = (s - s * factor).detach() + s * factor
    v = torch.clamp(x / s, qmin, qmax)
    return ((v.round() - v).detach() + v) * s


@pytest.mark.parametrize("per_channel", [False, True])
def test_fake_quant_matches_the_autograd_graph(per_channel):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 3
    scale = torch.rand(4, 1, 1, 1) + 0.5 if per_channel else torch.tensor(0.9)
    codes = torch.tensor([7.4, 7.6, -8.4, -8.6, 0.2])  # the half-step bands beyond both ends
    x[0, 0, 0, :] = codes * scale.flatten()[0]
    grad_out = torch.randn_like(x)
    got, want = [], []
    for fn, out in ((fake_quant, got), (_autograd_reference, want)):
        xx, ss = x.clone().requires_grad_(True), scale.clone().requires_grad_(True)
        y = fn(xx, ss, -8, 7, 0.3)
        y.backward(grad_out)
        out += [y.detach(), xx.grad, ss.grad]
    # (the reference's grad_scale trick moves s, and its d/dx is g * s / s: equal to rounding)
    assert torch.allclose(got[0], want[0], rtol=1e-6, atol=0)
    assert torch.allclose(got[1], want[1], rtol=1e-6, atol=0)
    band = got[1][0, 0, 0]  # beyond the bounds no gradient, also where rounding lands on them
    assert band[:4].eq(0).all() and band[4] == grad_out[0, 0, 0, 4]
    assert torch.allclose(got[2], want[2], rtol=1e-4, atol=1e-5)


def test_fake_quant_without_gradients_for_one_input():
    x = torch.tensor([0.3, 0.6, 20.0], requires_grad=True)
    s = torch.tensor(1.0)
    fake_quant(x, s, -8, 7).sum().backward()
    assert torch.equal(x.grad, torch.tensor([1.0, 1.0, 0.0]))
    s = torch.tensor(1.0, requires_grad=True)
    fake_quant(torch.tensor([0.3, 9.0]), s, -8, 7).sum().backward()
    assert s.grad.item() == pytest.approx(-0.3 + 7)


def test_bad_bits_refused():
    with pytest.raises(ValueError):
        Quantizer(1, True)
