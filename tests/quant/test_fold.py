import copy

import pytest
import torch
from torch import nn

from dfq.models import load_model
from dfq.quant.fold import fold_bn


def _randomize_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)


@pytest.mark.parametrize(
    "name, size",
    [
        ("cifar10_resnet20", 32),
        ("torchvision:mobilenet_v2", 64),
        ("timm:mobilenetv3_small_100", 64),
    ],
)
def test_folded_bn_gives_same_fp_outputs(name, size):
    torch.manual_seed(0)
    model, _ = load_model(name, pretrained=False)
    _randomize_bn(model)
    model.eval()
    ref = copy.deepcopy(model)
    x = torch.randn(4, 3, size, size)
    result = fold_bn(model, x)
    assert result.folded and not result.unfolded
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-4, rtol=1e-4)


def test_conv_without_bias_gets_one():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4)).eval()
    _randomize_bn(model)
    x = torch.randn(2, 3, 8, 8)
    ref = model(x)
    fold_bn(model, x)
    assert model[0].bias is not None and isinstance(model[1], nn.Identity)
    assert torch.allclose(model(x), ref, atol=1e-5)


def test_bn_not_after_conv_is_reported():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    result = fold_bn(model, torch.randn(2, 3, 8, 8))
    assert result.folded == [] and result.unfolded == ["2"]


def _check_unfolded(model, x, bn_names):
    """fold_bn leaves every BN in `bn_names` in place and the model's output unchanged."""
    model.eval()
    _randomize_bn(model)
    with torch.no_grad():
        ref = model(x)
    result = fold_bn(model, x)
    assert result.folded == [] and result.unfolded == bn_names
    assert all(isinstance(model.get_submodule(n), nn.BatchNorm2d) for n in bn_names)
    with torch.no_grad():
        assert torch.equal(model(x), ref)


def test_bn_after_two_activations_is_not_folded():
    # The ReLUs' outputs are freed at once: without keeping the conv output alive, the BN's input
    # may reuse its id() and the BN was folded into the conv (max error 1.6 on this model).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ReLU(), nn.BatchNorm2d(4))
    _check_unfolded(model, torch.randn(2, 3, 8, 8), ["3"])


def test_bn_after_inplace_activation_is_not_folded():
    # ReLU(inplace=True) returns the conv's own tensor object, modified
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.BatchNorm2d(4))
    _check_unfolded(model, torch.randn(2, 3, 8, 8), ["2"])


class _InplaceAdd(nn.Module):
    """Conv, a functional in-place change no module hook sees, then BN: only the version moved."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y.clamp_(min=0)
        return self.bn(y)


def test_bn_after_functional_inplace_change_is_not_folded():
    torch.manual_seed(0)
    _check_unfolded(_InplaceAdd(), torch.randn(2, 3, 8, 8), ["bn"])


class _SharedBN(nn.Module):
    """One BN module normalizes the outputs of two convs."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.a(x)) + self.bn(self.b(x))


def test_bn_shared_by_two_paths_is_not_folded():
    torch.manual_seed(0)
    _check_unfolded(_SharedBN(), torch.randn(2, 3, 8, 8), ["bn"])


class _ConvReadTwice(nn.Module):
    """The conv's output feeds the BN and a second conv: folding would change the second path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
        self.side = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + self.side(y)


def test_conv_read_by_another_module_is_not_folded():
    torch.manual_seed(0)
    _check_unfolded(_ConvReadTwice(), torch.randn(2, 3, 8, 8), ["bn"])
