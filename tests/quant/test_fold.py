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


@pytest.mark.parametrize("name, size", [("cifar10_resnet20", 32), ("torchvision:mobilenet_v2", 64),
                                        ("timm:mobilenetv3_small_100", 64)])
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
